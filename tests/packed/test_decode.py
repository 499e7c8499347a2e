"""Multi-adapter decoding gives, token for token, what decoding each adapter alone gives
(lora_jax.eval.decoding.generate), greedy and beam, on the tiny GPT-2 and a tiny grouped-query Llama."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from lora_jax.eval.decoding import generate
from lora_jax.eval.multi_decode import generate_multi
from lora_jax.lora import LoraConfig, iter_adapters
from lora_jax.lora import init as lora_init
from lora_jax.lora.stack import stack, unstack
from lora_jax.models.pretrained import load_model
from lora_jax.models.registry import lora_modules

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
    _check(lm, _adapters(lm, 0.5), prompts, eos, eos, max_new_tokens=8, num_beams=3,
           no_repeat_ngram_size=2, batch_size=4)  # fmt: skip


@pytest.mark.torch
def test_multi_adapter_decoding_on_a_gqa_llama(tmp_path):
    """The Llama path (grouped-query attention, RoPE, SwiGLU with gate/up/down adapters) on a
    tiny random Llama written by transformers (compiles in seconds; the real SmolLM2 took a
    minute of CI for the same check). Beam search; greedy is the GPT-2 test's."""
    from tests.models.conftest import write_tiny_hf_model

    lm = load_model(str(write_tiny_hf_model(tmp_path / "llama", "llama_gqa")))
    rng = np.random.default_rng(1)
    prompts = [rng.integers(3, lm.config.vocab_size, n).tolist() for n in (6, 4, 9, 5)]
    eos = lm.config.eos_token_id if lm.config.eos_token_id is not None else lm.tokenizer.eos_id
    _check(lm, _adapters(lm, 0.5), prompts, eos, eos, max_new_tokens=8, num_beams=3,
           no_repeat_ngram_size=2, batch_size=4)  # fmt: skip
