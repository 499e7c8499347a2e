"""Shared attention pieces: the explicit KV cache, default positions, masks and the attend call.

The cache is a plain pytree so decoding code can jit, donate and reorder it::

    {"layers": ({"k": [B, S, kv_heads, head_dim], "v": [B, S, kv_heads, head_dim]}, ...),
     "mask":   [B, S] bool,   # which slots hold a real (non-padding) token
     "index":  [] int32}      # next slot to write

Every leaf except ``index`` has batch as axis 0, so beam search can reorder it with
``x[beam_idx]``. A call with ``T`` new tokens writes slots ``index .. index+T-1``; query ``t``
attends to valid slots ``s <= index + t`` (earlier tokens and, causally, itself).
Positions default to the count of real tokens before each token, so left padding gives the
same positions (and the same logits) as the unpadded sequence.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

Cache = dict[str, Any]
LayerCache = dict[str, jax.Array]


def init_kv_cache(
    num_layers: int, batch_size: int, max_len: int, kv_heads: int, head_dim: int, dtype: Any
) -> Cache:
    """Zeros for ``num_layers`` layers of k/v ``[batch_size, max_len, kv_heads, head_dim]``."""
    shape = (batch_size, max_len, kv_heads, head_dim)
    layers = tuple(
        {"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype)} for _ in range(num_layers)
    )
    return {
        "layers": layers,
        "mask": jnp.zeros((batch_size, max_len), bool),
        "index": jnp.zeros((), jnp.int32),
    }


def check_cache(cache: Cache, num_layers: int, batch_size: int, new_tokens: int) -> None:
    """Static checks (shapes only) with errors that say what to fix."""
    if not isinstance(cache, dict) or set(cache) != {"layers", "mask", "index"}:
        raise ValueError("cache must be the dict returned by registry.init_cache(cfg, B, max_len)")
    if len(cache["layers"]) != num_layers:
        raise ValueError(
            f"cache has {len(cache['layers'])} layers but the model has {num_layers}; "
            "build it with init_cache for this model's config"
        )
    b, s = cache["mask"].shape
    if b != batch_size:
        raise ValueError(f"cache batch size {b} != input batch size {batch_size}")
    if new_tokens > s:
        raise ValueError(f"{new_tokens} new tokens do not fit a cache of max_len {s}")


def prepare(
    attention_mask: jax.Array,
    positions: jax.Array | None,
    cache: Cache | None,
    sliding_window: int | None = None,
) -> tuple[jax.Array, jax.Array, Cache | None]:
    """Positions, attention mask and the cache's updated slot mask for ``T`` new tokens.

    attention_mask: [B, T] (1 = real). Returns ``positions [B, T] int32``,
    ``mask [B, 1, T, S] bool`` (S = T without cache, max_len with it) and the cache with its
    ``mask`` updated (k/v and ``index`` are written by :func:`write_and_read` / the model).
    """
    valid = attention_mask.astype(bool)
    _, t = valid.shape
    if cache is None:
        index = jnp.zeros((), jnp.int32)
        offset = jnp.zeros((valid.shape[0],), jnp.int32)
        key_valid = valid
    else:
        index = cache["index"]
        offset = jnp.sum(cache["mask"], axis=1, dtype=jnp.int32)
        key_valid = jax.lax.dynamic_update_slice(cache["mask"], valid, (0, index))
        cache = {**cache, "mask": key_valid}
    if positions is None:
        positions = offset[:, None] + jnp.maximum(jnp.cumsum(valid, axis=1, dtype=jnp.int32) - 1, 0)
    q_slot = index + jnp.arange(t, dtype=jnp.int32)[:, None]  # [T, 1]
    k_slot = jnp.arange(key_valid.shape[1], dtype=jnp.int32)[None, :]  # [1, S]
    allowed = k_slot <= q_slot
    if sliding_window is not None:
        allowed = allowed & (q_slot - k_slot < sliding_window)
    mask = key_valid[:, None, None, :] & allowed[None, None]
    return positions.astype(jnp.int32), mask, cache


def write_and_read(
    layer_cache: LayerCache | None, k: jax.Array, v: jax.Array, index: jax.Array | None
) -> tuple[jax.Array, jax.Array, LayerCache | None]:
    """Write new ``k, v: [B, T, kv_heads, hd]`` at ``index``; return the keys/values to attend to."""
    if layer_cache is None:
        return k, v, None
    ck = jax.lax.dynamic_update_slice(
        layer_cache["k"], k.astype(layer_cache["k"].dtype), (0, index, 0, 0)
    )
    cv = jax.lax.dynamic_update_slice(
        layer_cache["v"], v.astype(layer_cache["v"].dtype), (0, index, 0, 0)
    )
    return ck, cv, {"k": ck, "v": cv}


def attend(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array) -> jax.Array:
    """Scaled dot-product attention; q: [B, T, H, hd], k/v: [B, S, KV, hd] (GQA when KV < H),
    mask: [B, 1, T, S] bool. Softmax runs in fp32 (jax.nn.dot_product_attention). -> [B, T, H, hd]."""
    k = k.astype(q.dtype)
    v = v.astype(q.dtype)
    return jax.nn.dot_product_attention(q, k, v, mask=mask, implementation="xla")


def prepare_call(
    input_ids: jax.Array, attention_mask: Any, positions: Any, cache: Any, cfg: Any
) -> tuple[jax.Array, jax.Array, Any, Any]:
    """The start of every model call: default all-ones mask, cache check, then
    ``(positions [B, T], attention mask, cache, write index or None)``."""
    b, t = input_ids.shape
    if attention_mask is None:
        attention_mask = jnp.ones((b, t), jnp.int32)
    if cache is not None:
        check_cache(cache, cfg.num_layers, b, t)
    positions, mask, cache = prepare(attention_mask, positions, cache, cfg.sliding_window)
    return positions, mask, cache, None if cache is None else cache["index"]


def finish_call(logits: jax.Array, cache: Any, new_layers: list, index: Any, t: int):
    """The end of every model call: ``(logits fp32, updated cache or None)``."""
    if cache is None:
        return logits.astype(jnp.float32), None
    return logits.astype(jnp.float32), {
        "layers": tuple(new_layers),
        "mask": cache["mask"],
        "index": index + t,
    }
