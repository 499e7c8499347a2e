"""Multi-adapter decoding gives, token for token, what decoding each adapter alone gives
(lora_jax.decoding.generate), greedy and beam, on the tiny GPT-2 and (slow) the real SmolLM2."""

from __future__ import annotations

import os

import jax
import numpy as np
import pytest

from lora_jax.decoding import generate
from lora_jax.lora import LoraConfig, iter_adapters
from lora_jax.lora import init as lora_init
from lora_jax.models.pretrained import load_model
from lora_jax.models.registry import lora_modules
from lora_jax.packed.decode import generate_multi
from lora_jax.packed.stack import stack, unstack

ADAPTERS = [("qv", 1, 0), ("attn", 4, 1), ("all", 8, 2)]  # targets, r, seed


def _adapters(lm, scale: float):
    """Random trained-looking adapters: B drawn non-zero so each changes the output."""
    trees = []
    for targets, r, seed in ADAPTERS:
        tree, _ = lora_init(
            jax.random.PRNGKey(seed),
            lm.params,
            LoraConfig(r=r, alpha=2.0 * r, targets=targets),
            lora_modules(lm.config),
        )
        key = jax.random.PRNGKey(100 + seed)
        for i, (_, _, ad) in enumerate(iter_adapters(tree)):
            ad["b"] = scale * jax.random.normal(jax.random.fold_in(key, i), ad["b"].shape)
        trees.append(tree)
    return trees


def _check(lm, trees, prompts, eos, pad, **kw):
    stacked, _ = stack(trees)
    multi = generate_multi(
        lm.module,
        lm.params,
        stacked,
        prompts,
        cfg=lm.config,
        eos_token_id=eos,
        pad_token_id=pad,
        **kw,
    )
    outs = []
    for k, tree in enumerate(trees):
        solo = generate(lm.module, {"params": lm.params, "lora": unstack(stacked, k, tree)}, prompts,
                        cfg=lm.config, eos_token_id=eos, pad_token_id=pad, **kw)  # fmt: skip
        assert multi[k] == solo, f"adapter {k}"
        outs.append(solo)
    assert any(o != outs[0] for o in outs[1:])  # the adapters do change the output
    return outs


@pytest.mark.parametrize("beams", [1, 3])
def test_multi_adapter_decoding_equals_single(tiny_e2e_gpt2_dir, beams):
    lm = load_model(str(tiny_e2e_gpt2_dir))
    rng = np.random.default_rng(0)
    prompts = [
        rng.integers(0, lm.config.vocab_size, n).tolist() for n in (5, 8, 3, 7)
    ]  # one batch shape
    eos = lm.tokenizer.eos_id
    _check(lm, _adapters(lm, 0.5), prompts, eos, eos, max_new_tokens=8, num_beams=beams,
           no_repeat_ngram_size=2, batch_size=4)  # fmt: skip


@pytest.mark.slow
def test_multi_adapter_decoding_on_smollm2():
    gguf = os.environ.get("LORA_JAX_SMOLLM2_GGUF")
    if not gguf:
        pytest.skip("set LORA_JAX_SMOLLM2_GGUF to the SmolLM2-135M GGUF (scripts: get-smollm2)")
    lm = load_model(gguf)
    tok = lm.tokenizer
    prompts = [tok.encode(s) for s in ("name[The Eagle] food[French] area[riverside] ||",
                                       "The capital of France is")]  # fmt: skip
    eos = lm.config.eos_token_id if lm.config.eos_token_id is not None else tok.eos_id
    trees = _adapters(lm, 0.02)[::2]  # q,v r=1 and all-linear r=8; beam search (greedy: tiny test)
    _check(lm, trees, prompts, eos, tok.pad_id, max_new_tokens=6, num_beams=2, batch_size=2)
