"""Incremental decoding with the KV cache equals full recomputation (left-padded batches)."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest_gguf import smollm2_gguf  # noqa: F401

from lora_jax.models.config import ModelConfig
from lora_jax.models.registry import build_model, init_cache

GPT2 = ModelConfig(
    model_type="gpt2", vocab_size=61, hidden_size=16, num_layers=2, num_heads=2, num_kv_heads=2,
    head_dim=8, intermediate_size=64, max_position_embeddings=32, attention_bias=True,
    mlp_bias=True, tie_word_embeddings=True, activation="gelu_new",
)  # fmt: skip
LLAMA = ModelConfig(
    model_type="llama", vocab_size=61, hidden_size=16, num_layers=2, num_heads=4, num_kv_heads=2,
    head_dim=4, intermediate_size=24, max_position_embeddings=32,
)  # fmt: skip
MISTRAL_SW = LLAMA.replace(model_type="mistral", sliding_window=3)


@functools.cache
def setup(cfg: ModelConfig):
    module = build_model(cfg)
    rng = np.random.default_rng(0)
    ids = jnp.asarray(rng.integers(0, cfg.vocab_size, (3, 10)), jnp.int32)
    params = jax.jit(module.init)(jax.random.key(0), ids)["params"]
    # larger weights than the 0.02 init so the comparison is not between near-constant logits
    params = jax.tree.map(lambda p: p * 8.0 if p.ndim == 2 else p, params)
    # left padding of different lengths in the prompt (first 6 tokens); row 2 unpadded
    mask = np.ones((3, 10), np.int32)
    mask[0, :3] = 0
    mask[1, :1] = 0
    apply = jax.jit(
        lambda ids, mask, cache: module.apply({"params": params}, ids, mask, cache=cache)
    )
    return apply, ids, jnp.asarray(mask)


def decode(apply, cfg, ids, mask, prompt_len: int, step: int, max_len: int = 16):
    cache = init_cache(cfg, ids.shape[0], max_len)
    logits, cache = apply(ids[:, :prompt_len], mask[:, :prompt_len], cache)
    outs = [logits]
    for t in range(prompt_len, ids.shape[1], step):
        logits, cache = apply(ids[:, t : t + step], mask[:, t : t + step], cache)
        outs.append(logits)
    return jnp.concatenate(outs, axis=1), cache


@pytest.mark.parametrize(
    "cfg,step",
    [(GPT2, 1), (LLAMA, 1), (LLAMA, 2), (MISTRAL_SW, 1)],
    ids=["gpt2", "llama_gqa", "llama_gqa_2_per_step", "sliding_window"],
)
def test_cached_decoding_equals_full_forward(cfg, step):
    apply, ids, mask = setup(cfg)
    full, none = apply(ids, mask, None)
    assert none is None
    inc, cache = decode(apply, cfg, ids, mask, prompt_len=6, step=step)
    real = np.asarray(mask).astype(bool)
    assert np.abs(np.asarray(full)[real]).max() > 1.0
    np.testing.assert_allclose(np.asarray(inc)[real], np.asarray(full)[real], atol=1e-5, rtol=0)
    # each row's cache is left-aligned: its real tokens count, whatever the prompt's padding
    np.testing.assert_array_equal(np.asarray(cache["lengths"]), real.sum(axis=1))


def test_left_padding_gives_unpadded_logits():
    """Default positions skip padding: a left-padded row equals the same tokens unpadded."""
    apply, ids, mask = setup(LLAMA)
    full, _ = apply(ids, mask, None)
    alone, _ = apply(ids[:1, 3:], jnp.ones((1, 7), jnp.int32), None)
    np.testing.assert_allclose(np.asarray(full[0, 3:]), np.asarray(alone[0]), atol=1e-5)


def test_cache_layout_and_beam_reorder():
    apply, ids, mask = setup(LLAMA)
    cache = init_cache(LLAMA, 3, 16, jnp.float32)
    assert cache["lengths"].shape == (3,) and cache["lengths"].dtype == jnp.int32
    for leaf in jax.tree.leaves(cache):
        assert leaf.shape[0] == 3
    assert cache["layers"][0]["k"].shape == (3, 2, 16, 4)  # [B, kv_heads, max_len, head_dim]
    _, cache = apply(ids[:, :6], mask[:, :6], cache)
    beam_idx = jnp.asarray([2, 0, 0])
    reordered = jax.tree.map(lambda x: x[beam_idx], cache)
    inc, _ = apply(ids[beam_idx, 6:], mask[beam_idx, 6:], reordered)
    full, _ = apply(ids[beam_idx], mask[beam_idx], None)
    np.testing.assert_allclose(np.asarray(inc), np.asarray(full[:, 6:]), atol=1e-5)


def test_bad_cache_errors():
    module = build_model(LLAMA)
    ids = jnp.zeros((2, 4), jnp.int32)
    params = jax.jit(module.init)(jax.random.key(0), ids)["params"]
    with pytest.raises(ValueError, match="batch size 3"):
        module.apply({"params": params}, ids, cache=init_cache(LLAMA, 3, 8))
    with pytest.raises(ValueError, match="do not fit"):
        module.apply({"params": params}, ids, cache=init_cache(LLAMA, 2, 3))
    with pytest.raises(ValueError, match="layers"):
        module.apply({"params": params}, ids, cache=init_cache(LLAMA.replace(num_layers=1), 2, 8))


@pytest.mark.slow
def test_smollm2_greedy_cached_decoding_equals_full_forward(smollm2_gguf):  # noqa: F811
    """Real SmolLM2-135M: greedy decoding through the cache, left-padded batch of two prompts;
    every step's logits equal a full forward over the whole sequence so far."""
    from lora_jax.models.pretrained import load_model

    lm = load_model(str(smollm2_gguf))
    rows = [lm.tokenizer.encode(t) for t in ["The capital of France is", "Hello"]]
    width = max(map(len, rows))
    ids = np.zeros((2, width), np.int32)
    mask = np.zeros((2, width), np.int32)
    for i, r in enumerate(rows):
        ids[i, width - len(r) :], mask[i, width - len(r) :] = r, 1
    # the weights are an argument: closed over, they would be baked into the program as
    # constants (135M of them), which XLA compiles slowly
    fn = jax.jit(lambda p, i, m, c: lm.module.apply({"params": p}, i, m, cache=c))
    apply = lambda i, m, c: fn(lm.params, i, m, c)  # noqa: E731
    logits, cache = apply(ids, mask, init_cache(lm.config, 2, width + 4))
    steps = []
    for _ in range(4):
        nxt = np.asarray(jnp.argmax(logits[:, -1], axis=-1), np.int32)[:, None]
        ids, mask = np.concatenate([ids, nxt], 1), np.concatenate([mask, np.ones_like(nxt)], 1)
        logits, cache = apply(nxt, np.ones_like(nxt), cache)
        steps.append(np.asarray(logits[:, 0]))
    full, _ = jax.jit(lm.module.apply)({"params": lm.params}, ids, mask)
    np.testing.assert_allclose(np.stack(steps, 1), np.asarray(full[:, -4:]), atol=1e-3, rtol=0)
