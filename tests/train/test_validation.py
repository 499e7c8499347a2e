"""Validation loss (lora_jax/validation.py over lora_jax.train.step.make_eval_loss) equals a hand
computation: each held-out example alone (no padding, batch of one), log-softmax in numpy, NLL
summed over its target tokens, divided by the total number of target tokens. Examples of
different lengths in padded batches with a partial last batch check the masks and the token
weighting. fp32 with jax_default_matmul_precision "highest"."""

from __future__ import annotations

import jax
import numpy as np
import pytest


def test_validation_loss_equals_hand_computation(tiny_e2e_gpt2_dir):
    from lora_jax.lora import LoraConfig
    from lora_jax.lora import init as lora_init
    from lora_jax.models.pretrained import load_model
    from lora_jax.models.registry import lora_modules
    from lora_jax.train.step import make_eval_loss
    from lora_jax.train.validation import validation_batches, validation_loss

    with jax.default_matmul_precision("highest"):
        lm = load_model(str(tiny_e2e_gpt2_dir))
        lora, _ = lora_init(jax.random.PRNGKey(0), lm.params, LoraConfig(r=2, targets="qv"),
                            lora_modules(lm.config))  # fmt: skip
        # B != 0 so the adapter changes the loss (B is zero at init)
        lora = jax.tree.map(lambda x: x + 0.05, lora)
        rng = np.random.default_rng(0)
        examples = []
        for n, prompt in [(9, 4), (14, 6), (5, 2)]:
            ids = rng.integers(1, 500, size=n).tolist()
            examples.append({"input_ids": ids, "loss_mask": [0] * prompt + [1] * (n - prompt)})
        batches = validation_batches(examples, batch_size=2, buckets=[8, 16], pad_id=0)
        assert len(batches) == 2  # 2 + 1 (one padding row), buckets 16 and 8
        got = validation_loss(make_eval_loss(lm.module), lora, lm.params, batches)

        forward = jax.jit(lambda ids: lm.module.apply({"params": lm.params, "lora": lora}, ids,
                          attention_mask=jax.numpy.ones_like(ids), deterministic=True)[0])  # fmt: skip
        total, tokens = 0.0, 0
        for ex in examples:
            ids = np.asarray(ex["input_ids"])[None]
            logits = forward(ids)
            logp = jax.nn.log_softmax(np.asarray(logits[0], np.float64), axis=-1)
            for t in range(1, ids.shape[1]):
                if ex["loss_mask"][t]:
                    total -= float(logp[t - 1, ids[0, t]])
                    tokens += 1
    expected = total / tokens
    assert got == pytest.approx(expected, rel=1e-5)
    # and not the loss of the base model: the adapter is in the computation
    base = validation_loss(make_eval_loss(lm.module), None, lm.params, batches)
    assert abs(base - got) > 1e-3
