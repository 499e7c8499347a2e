"""Decoding speed options: merged-weight decoding (task.decode.merged) gives the same tokens as
the unmerged LoRA branch on a tiny GPT-2 (fp32, highest matmul precision), and its default
merges only an fp32 base; the beam's partial cache reorder (generated slots only) equals the
whole-row gather."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lora_jax.eval.decoding import _reorder_generated, generate
from lora_jax.eval.evaluate import decode_variables
from lora_jax.lora import LoraConfig
from lora_jax.lora import init as lora_init
from lora_jax.models.config import ModelConfig
from lora_jax.models.registry import build_model, lora_modules

CFG = ModelConfig(model_type="gpt2", vocab_size=97, hidden_size=32, num_layers=2, num_heads=4,
                  num_kv_heads=4, head_dim=8, intermediate_size=128, max_position_embeddings=64,
                  tie_word_embeddings=True, attention_bias=True, mlp_bias=True,
                  activation="gelu_new")  # fmt: skip
PROMPTS = [[5, 6, 7], [9, 10, 11, 12, 13, 14, 15], [3], [40, 41, 42, 43], [60, 61]]


@pytest.fixture(scope="module")
def adapted():
    module = build_model(CFG)
    params = module.init(jax.random.PRNGKey(0), jnp.ones((1, 4), jnp.int32))["params"]
    # a peaked head (larger embeddings) so that greedy choices are not near-ties of noise
    params = jax.tree.map(lambda x: x, params)
    params["wte"]["embedding"] = params["wte"]["embedding"] * 20.0
    lcfg = LoraConfig.from_dict({"r": 4, "targets": "all", "seed": 0})
    lora, _ = lora_init(jax.random.PRNGKey(1), params, lcfg, lora_modules(CFG))
    g = np.random.default_rng(0)
    lora = jax.tree.map(
        lambda x: jnp.asarray(0.3 * g.standard_normal(x.shape), jnp.float32) if x.ndim == 2 else x,
        lora,
    )
    return module, params, lora


def _decode(module, variables, num_beams):
    return generate(module, variables, PROMPTS, cfg=CFG, eos_token_id=0, pad_token_id=0,
                    max_new_tokens=12, num_beams=num_beams, batch_size=8)  # fmt: skip


@pytest.mark.parametrize("num_beams", [1, 3])
def test_merged_decode_equals_unmerged(adapted, num_beams):
    module, params, lora = adapted
    unmerged = {"params": params, "lora": lora}
    merged = decode_variables(unmerged, CFG, None)  # fp32 base: merged by default
    assert set(merged) == {"params"}
    with jax.default_matmul_precision("highest"):
        a = _decode(module, unmerged, num_beams)
        b = _decode(module, merged, num_beams)
        base = _decode(module, {"params": params}, num_beams)
    assert a == b
    assert a != base  # the adapter changes the output, so the merge really carried it
    assert sum(map(len, a)) > len(PROMPTS)


def test_merge_default_keeps_a_bf16_base_unmerged(adapted):
    _, params, lora = adapted
    bf16 = jax.tree.map(lambda x: x.astype(jnp.bfloat16), params)
    v = {"params": bf16, "lora": lora}
    assert decode_variables(v, CFG, None) is v
    assert set(decode_variables(v, CFG, True)) == {"params"}
    v32 = {"params": params, "lora": lora}
    assert decode_variables(v32, CFG, False) is v32


@pytest.mark.parametrize("layout", ["shared_index", "per_row_lengths"])
def test_partial_beam_reorder_equals_full_gather(layout):
    """After the prefill the prompt slots are equal within each prompt's beams; moving only the
    generated slots then equals gathering whole rows, for a cache written at one shared index
    ([n, S, kv, hd]) and a per-row left-aligned one ([n, kv, S, hd], lengths [n])."""
    b, nb, p, width = 2, 3, 5, 4
    n, slots = b * nb, p + width
    g = np.random.default_rng(0)
    prompt = np.repeat(g.standard_normal((b, 1, slots, 2, 8)), nb, axis=1).reshape(n, slots, 2, 8)
    gen = g.standard_normal((n, slots, 2, 8))
    if layout == "shared_index":
        start = np.full((n,), p)
        x = np.where(np.arange(slots)[None, :, None, None] >= p, gen, prompt)
        cache = {"layers": ({"k": x},), "index": np.int32(p)}
    else:
        start = np.repeat(np.array([2, 4]), nb)  # prompt lengths of the 2 prompts
        sl, st = np.arange(slots)[None, :, None, None], start[:, None, None, None]
        # prompt slots, then the generated ones, then unwritten (zero) slots
        x = np.where(sl < st, prompt, np.where(sl < st + width, gen, 0.0))
        x = x.transpose(0, 2, 1, 3)  # [n, kv, S, hd]
        cache = {"layers": ({"k": x},), "lengths": start.astype(np.int32)}
    cache["layers"] = ({"k": cache["layers"][0]["k"].astype(np.float32)},)
    parent = (g.integers(0, nb, (b, nb)) + nb * np.arange(b)[:, None]).reshape(n)
    got = _reorder_generated(jax.tree.map(jnp.asarray, cache), jnp.asarray(parent),
                             jnp.asarray(start, jnp.int32), width, slots)  # fmt: skip
    want = jax.tree.map(lambda y: y[parent] if np.ndim(y) else y, cache)
    np.testing.assert_array_equal(got["layers"][0]["k"], want["layers"][0]["k"])
