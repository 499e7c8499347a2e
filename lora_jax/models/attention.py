"""Shared attention pieces: the explicit KV cache, default positions, and the attend call.

Attention runs through ``jax.nn.dot_product_attention`` with causality as a flag and padding
as per-row key lengths, never as a materialised ``[B, 1, T, S]`` mask, except in the one case
that lengths cannot express (see :func:`prepare_call`):

- training / full forward, right-padded rows (``seq_lengths``, what the train step passes):
  ``is_causal`` + ``key_value_seq_lengths``; no gather, no mask.
- any ``attention_mask`` (left padding from ``decoding.generate``, or holes): each row is
  *compacted* first (real tokens moved to the front in order, a stable argsort of the mask),
  so it is right-padded; the outputs are put back in the input order at the end.
- KV-cache decode steps (one new token per row): ``key_value_seq_lengths`` = tokens cached +
  1; no mask.
- multi-token calls into a cache (the prompt prefill), and any cached call of a sliding-window
  layer: a ``[B, 1, T, S]`` bool mask, because the causal diagonal starts at a different cache
  slot in every row (``is_causal`` assumes it starts at slot 0 for all rows). It is built once
  per call, not per step; a model whose layers differ (Gemma: sliding and global layers, Qwen2
  from ``max_window_layers`` on) gets two, ``mask`` and ``window_mask``, and each layer picks
  its own.
- packed rows (``segment_ids``, sequence packing: several examples per row, lora_jax.tasks.
  batching.pack_examples): a ``[B, 1, T, T]`` bool mask, causal within a segment only (key
  segment = query segment), built once per call; positions restart per example (given by the
  batch, else derived from the segments). Padding (segment 0) attends only to padding. With
  ``cfg.packed_block`` = C (``data.pack=step``: a whole step in a row, far longer than any
  example) and T > 2C, the row is cut into blocks of Q = C/4 queries, each attending to the
  keys of its block and of the blocks covering the C tokens before it (a ``[B·n, 1, Q, C+Q]``
  mask, :func:`_block_mask`): exact while no segment is longer than C (a query's segment then
  starts at most C-1 tokens back); O(T·(C+Q)) instead of O(T²).

The cache is a plain pytree whose leaves all have batch on axis 0 (beam search reorders it with
``x[beam_idx]``)::

    {"layers": ({"k": [B, kv_heads, S, head_dim], "v": [B, kv_heads, S, head_dim]}, ...),
     "lengths": [B] int32}   # tokens cached per row: slots [0, lengths) are real

Each row's cache is left-aligned (its real tokens in slots ``0 .. lengths-1``) whatever the
padding of the prompt, so a row's new tokens are written at its own ``lengths``. K and V keep
heads before slots so that the attention dot contracts them without transposing the whole
cache in every layer at every step (the ``[B, S, H, hd]`` layout cost a full-cache transpose
copy per layer per decode step on XLA:CPU).
Positions default to the count of real tokens before each token, so left padding gives the
same positions (and the same logits) as the unpadded sequence.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

Cache = dict[str, Any]
LayerCache = dict[str, jax.Array]


class AttnSpec(NamedTuple):
    """What every layer's attention needs, computed once per call (a pytree of arrays).

    kv_lengths: [B] int32, keys ``[0, kv_lengths)`` may be attended to (cache + new tokens).
    start: [B] int32 cache slot of this call's first token, or None without a cache.
    mask: [B, 1, T, S] bool, only for multi-token calls into a cache (else None).
    window_mask: the mask of sliding-window layers (see below), or None.
    """

    kv_lengths: jax.Array
    start: jax.Array | None
    mask: jax.Array | None
    # the same for the layers with a sliding window (when the model has any): [B, 1, T, S]
    # bool for any cached call (decode steps included) and packed rows, else None
    window_mask: jax.Array | None = None


def init_kv_cache(
    num_layers: int, batch_size: int, max_len: int, kv_heads: int, head_dim: int, dtype: Any
) -> Cache:
    """Zeros for ``num_layers`` layers of k/v ``[batch_size, kv_heads, max_len, head_dim]``."""
    shape = (batch_size, kv_heads, max_len, head_dim)
    layers = tuple(
        {"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype)} for _ in range(num_layers)
    )
    return {"layers": layers, "lengths": jnp.zeros((batch_size,), jnp.int32)}


def check_cache(cache: Cache, num_layers: int, batch_size: int, new_tokens: int) -> None:
    """Static checks (shapes only) with errors that say what to fix."""
    if not isinstance(cache, dict) or set(cache) != {"layers", "lengths"}:
        raise ValueError("cache must be the dict returned by registry.init_cache(cfg, B, max_len)")
    if len(cache["layers"]) != num_layers:
        raise ValueError(
            f"cache has {len(cache['layers'])} layers but the model has {num_layers}; "
            "build it with init_cache for this model's config"
        )
    b, _, s, _ = cache["layers"][0]["k"].shape
    if b != batch_size:
        raise ValueError(f"cache batch size {b} != input batch size {batch_size}")
    if new_tokens > s:
        raise ValueError(f"{new_tokens} new tokens do not fit a cache of max_len {s}")


def prepare_call(
    input_ids: jax.Array,
    attention_mask: Any,
    positions: Any,
    cache: Any,
    cfg: Any,
    seq_lengths: Any = None,
    segment_ids: Any = None,
) -> tuple[jax.Array, jax.Array, AttnSpec, jax.Array | None]:
    """The start of every model call.

    input_ids: [B, T]. Padding is given either by ``attention_mask [B, T]`` (1 = real, any
    layout) or by ``seq_lengths [B]`` (right padding: tokens ``[0, len)`` are real); neither
    means no padding. Returns ``(input_ids, positions [B, T] int32, spec, perm)`` where rows
    given by a mask have been compacted by ``perm [B, T]`` (None when not) — undo it with
    :func:`restore_order`.
    """
    b, t = input_ids.shape
    if attention_mask is not None and seq_lengths is not None:
        raise ValueError("pass attention_mask or seq_lengths, not both")
    if segment_ids is not None:
        if cache is not None or attention_mask is not None or seq_lengths is not None:
            raise ValueError("segment_ids (packed rows) go without a cache, attention_mask or "
                             "seq_lengths")  # fmt: skip
        return _packed_call(input_ids, jnp.asarray(segment_ids), positions, cfg)
    start = None
    if cache is not None:
        check_cache(cache, cfg.num_layers, b, t)
        start = cache["lengths"]
    base = jnp.zeros((b,), jnp.int32) if start is None else start
    perm = None
    if attention_mask is not None:
        valid = jnp.asarray(attention_mask).astype(bool)
        n = jnp.sum(valid, axis=1, dtype=jnp.int32)
        if positions is None:
            positions = base[:, None] + jnp.maximum(jnp.cumsum(valid, 1, dtype=jnp.int32) - 1, 0)
        perm = jnp.argsort(~valid, axis=1, stable=True)  # real tokens first, order kept
        input_ids = jnp.take_along_axis(input_ids, perm, axis=1)
        positions = jnp.take_along_axis(jnp.asarray(positions), perm, axis=1)
    else:
        n = jnp.full((b,), t, jnp.int32) if seq_lengths is None else seq_lengths.astype(jnp.int32)
        if positions is None:
            positions = base[:, None] + jnp.arange(t, dtype=jnp.int32)[None, :]
    kv_lengths = base + n
    mask = window_mask = None
    window = model_window(cfg)
    if cache is not None and (t > 1 or window is not None):
        q_slot = (base[:, None] + jnp.arange(t, dtype=jnp.int32))[:, :, None]  # [B, T, 1]
        k_slot = jnp.arange(cache["layers"][0]["k"].shape[2], dtype=jnp.int32)[None, None, :]
        allowed = (k_slot <= q_slot) & (k_slot < kv_lengths[:, None, None])
        mask = allowed[:, None] if t > 1 else None
        if window is not None:
            window_mask = (allowed & (q_slot - k_slot < window))[:, None]
    spec = AttnSpec(kv_lengths=kv_lengths, start=start, mask=mask, window_mask=window_mask)
    return input_ids, jnp.asarray(positions).astype(jnp.int32), spec, perm


def model_window(cfg: Any) -> int | None:
    """The sliding window of the model's sliding layers, None when no layer slides."""
    window = getattr(cfg, "sliding_window", None)
    return window if window is None else getattr(cfg, "any_window", window)


def segment_positions(segment_ids: jax.Array) -> jax.Array:
    """Positions that restart at 0 where the segment id changes along a row: ``[B, T]``."""
    t = segment_ids.shape[1]
    idx = jnp.arange(t, dtype=jnp.int32)[None, :]
    change = jnp.concatenate(
        [jnp.ones_like(segment_ids[:, :1], bool), segment_ids[:, 1:] != segment_ids[:, :-1]], 1
    )
    start = jax.lax.cummax(jnp.where(change, idx, 0), axis=1)
    return idx - start


def _packed_call(
    input_ids: jax.Array, segment_ids: jax.Array, positions: Any, cfg: Any
) -> tuple[jax.Array, jax.Array, AttnSpec, None]:
    """:func:`prepare_call` for packed rows: causal attention within each segment."""
    b, t = input_ids.shape
    if positions is None:
        positions = segment_positions(segment_ids)
    block = getattr(cfg, "packed_block", None)
    window = model_window(cfg)
    windowed = None
    if block is not None and t > 2 * block:
        allowed = _block_mask(segment_ids, block, None)
        if window is not None:
            windowed = _block_mask(segment_ids, block, window)
    else:
        q_idx = jnp.arange(t, dtype=jnp.int32)[:, None]
        k_idx = jnp.arange(t, dtype=jnp.int32)[None, :]
        allowed = (k_idx <= q_idx)[None] & (segment_ids[:, :, None] == segment_ids[:, None, :])
        if window is not None:  # segments are contiguous: row offsets = positions
            windowed = (allowed & (q_idx - k_idx < window)[None])[:, None]
        allowed = allowed[:, None]
    spec = AttnSpec(kv_lengths=jnp.full((b,), t, jnp.int32), start=None, mask=allowed,
                    window_mask=windowed)  # fmt: skip
    return input_ids, jnp.asarray(positions).astype(jnp.int32), spec, None


def _block_mask(segment_ids: jax.Array, c: int, window: int | None) -> jax.Array:
    """``[B·n, 1, Q, (p+1)·Q]`` bool for packed rows whose segments are at most ``c`` long:
    the row in blocks of Q = max(c // 4, 16) queries, block i's keys being blocks i-p .. i
    (p = ⌈c/Q⌉, so a query's whole segment is among them); n = ⌈T/Q⌉, the row padded with
    segment -1. Smaller query blocks see fewer keys per query, c + Q instead of 2c (on XLA:CPU
    the SmolLM2 attention at c = 128: Q = 128 → 32 took 0.54 → 0.43 s per step)."""
    b, t = segment_ids.shape
    qb = max(c // 4, 16)
    p = -(-c // qb)
    n = -(-t // qb)
    seg = jnp.pad(segment_ids, ((0, 0), (p * qb, n * qb - t)), constant_values=-1)
    q_seg = seg[:, p * qb :].reshape(b, n, qb)
    k_seg = jnp.concatenate([seg[:, j * qb : (j + n) * qb].reshape(b, n, qb)
                             for j in range(p + 1)], axis=2)  # fmt: skip
    a = jnp.arange(qb, dtype=jnp.int32)[:, None]
    k = jnp.arange((p + 1) * qb, dtype=jnp.int32)[None, :]
    near = k - p * qb <= a  # key position <= query position
    if window is not None:
        near = near & (a + p * qb - k < window)
    allowed = near[None, None] & (q_seg[..., :, None] == k_seg[..., None, :])
    return allowed.reshape(b * n, 1, qb, (p + 1) * qb)


def _attend_blocks(
    q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array, scale: Any, softcap: Any
) -> jax.Array:
    """Attention of packed rows cut into query blocks (``mask`` from :func:`_block_mask`):
    q [B, T, H, hd], k/v [B, T, KV, hd] -> [B, T, H, hd]."""
    b, t, h, hd = q.shape
    qb = mask.shape[-2]
    p = mask.shape[-1] // qb - 1
    n = -(-t // qb)

    def windows(x):  # [B, T, ., hd] -> [B·n, (p+1)·Q, ., hd]: blocks i-p .. i
        x = jnp.pad(x, ((0, 0), (p * qb, n * qb - t), (0, 0), (0, 0)))
        parts = [x[:, j * qb : (j + n) * qb].reshape(b, n, qb, *x.shape[2:]) for j in range(p + 1)]
        return jnp.concatenate(parts, axis=2).reshape(b * n, (p + 1) * qb, *x.shape[2:])

    qs = jnp.pad(q, ((0, 0), (0, n * qb - t), (0, 0), (0, 0))).reshape(b * n, qb, h, hd)
    out = _sdpa(qs, windows(k), windows(v), mask=mask, scale=scale, softcap=softcap)
    return out.reshape(b, n * qb, h, hd)[:, :t]


def write_and_read(
    layer_cache: LayerCache | None, k: jax.Array, v: jax.Array, spec: AttnSpec
) -> tuple[jax.Array, jax.Array, LayerCache | None]:
    """Write new ``k, v: [B, T, kv_heads, hd]`` at each row's ``spec.start``; return the
    keys/values to attend to, ``[B, S, kv_heads, hd]`` (a transposed view of the cache that the
    attention dot folds away), and the updated layer cache."""
    if layer_cache is None:
        return k, v, None

    def put(c, x, i):  # c: [KV, S, hd], x: [T, KV, hd]
        return jax.lax.dynamic_update_slice(c, jnp.swapaxes(x, 0, 1).astype(c.dtype), (0, i, 0))

    ck = jax.vmap(put)(layer_cache["k"], k, spec.start)
    cv = jax.vmap(put)(layer_cache["v"], v, spec.start)
    return jnp.swapaxes(ck, 1, 2), jnp.swapaxes(cv, 1, 2), {"k": ck, "v": cv}


def _implementation(q: jax.Array) -> str | None:
    """cuDNN's fused attention on GPU for half-precision inputs; else XLA's (jax 0.10's
    ``implementation=None`` still means XLA everywhere)."""
    if jax.default_backend() == "gpu" and q.dtype in (jnp.bfloat16, jnp.float16):
        return "cudnn"
    return None


def attend(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    spec: AttnSpec,
    sliding_window: int | None = None,
    scale: float | None = None,
    softcap: float | None = None,
) -> jax.Array:
    """Scaled dot-product attention; q: [B, T, H, hd], k/v: [B, S, KV, hd] (GQA when KV < H).
    Softmax runs in fp32 (jax.nn.dot_product_attention). -> [B, T, H, hd].

    ``sliding_window``: this layer's window (keys less than that many positions back), None for
    a global layer; ``scale``: the score scale (None: 1/√hd); ``softcap``: scores become
    ``softcap·tanh(scores / softcap)`` before the mask (Gemma 2)."""
    k = k.astype(q.dtype)
    v = v.astype(q.dtype)
    mask = spec.mask
    if sliding_window is not None and spec.window_mask is not None:
        mask = spec.window_mask
    if mask is not None:  # into a cache, or packed rows: see the module docstring
        if spec.start is None and mask.shape[0] != q.shape[0]:  # packed rows in blocks
            return _attend_blocks(q, k, v, mask, scale, softcap)
        return _sdpa(q, k, v, mask=mask, scale=scale, softcap=softcap)
    # a row with no real token (filler rows) still attends to one key: finite outputs
    kv_len = jnp.maximum(spec.kv_lengths, 1).astype(jnp.int32)
    if spec.start is not None and q.shape[1] == 1 and sliding_window is None:
        return _attend_one(q, k, v, kv_len, scale, softcap)
    causal = spec.start is None  # one query per row into a cache: the lengths say it all
    window = None if sliding_window is None else (sliding_window - 1, 0)
    return _sdpa(q, k, v, scale=scale, softcap=softcap, is_causal=causal, kv_len=kv_len,
                 window=window, implementation=_implementation(q))  # fmt: skip


def _sdpa(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    *,
    mask: jax.Array | None = None,
    scale: float | None = None,
    softcap: float | None = None,
    is_causal: bool = False,
    kv_len: jax.Array | None = None,
    window: tuple[int, int] | None = None,
    implementation: str | None = None,
) -> jax.Array:
    """``jax.nn.dot_product_attention``, or with ``softcap`` (which it has no option for) the
    same arithmetic written out (its XLA path: fp32 logits, masked to ``-0.7·max``, fp32
    softmax), the scores soft-capped after scaling as transformers' Gemma 2 does."""
    if softcap is None:
        return jax.nn.dot_product_attention(
            q, k, v, mask=mask, scale=scale, is_causal=is_causal, key_value_seq_lengths=kv_len,
            local_window_size=window, implementation=implementation,
        )  # fmt: skip
    b, t, h, hd = q.shape
    s, kvh = k.shape[1], k.shape[2]
    allowed = jnp.ones((1, 1, t, s), bool) if mask is None else mask  # [B|1, 1, T, S]
    q_idx = jnp.arange(t, dtype=jnp.int32)[:, None]
    k_idx = jnp.arange(s, dtype=jnp.int32)[None, :]
    if is_causal:
        allowed = allowed & (k_idx <= q_idx)[None, None]
    if window is not None:
        allowed = allowed & (q_idx <= k_idx + window[0])[None, None]
    if kv_len is not None:
        allowed = allowed & (k_idx[None] < kv_len[:, None, None])[:, None]
    f32 = jnp.promote_types(q.dtype, jnp.float32)
    qg = q.reshape(b, t, kvh, h // kvh, hd)  # query head j reads kv head j // (h / kvh)
    logits = jnp.einsum("btkgd,bskd->bkgts", qg, k, preferred_element_type=f32)
    logits = logits * jnp.asarray(hd**-0.5 if scale is None else scale, f32)
    logits = jnp.tanh(logits / softcap) * softcap
    big_neg = jnp.asarray(-0.7 * float(jnp.finfo(jnp.float32).max), f32)
    allowed = allowed[:, :, None]  # [B|1, 1, 1, T, S] over (kv head, group)
    probs = jax.nn.softmax(jnp.where(allowed, logits, big_neg).astype(jnp.float32), axis=-1)
    out = jnp.einsum("bkgts,bskd->btkgd", probs.astype(v.dtype), v)
    return out.reshape(b, t, h, hd)


def _attend_one(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    kv_len: jax.Array,
    scale: float | None = None,
    softcap: float | None = None,
) -> jax.Array:
    """One query per row into a cache (a decode step): the same arithmetic as
    ``jax.nn.dot_product_attention``'s XLA path (logits in the input dtype, times the scale
    (1/√hd by default), masked to ``-0.7·max``, fp32 softmax), but contracted in the cache's
    own ``[B, KV, S, hd]`` layout with the query heads grouped per KV head, so no cache-sized
    transpose or batched-dot relayout runs per layer per step (on XLA:CPU the library call
    lowered the probs·V product to a slow generic dot). q: [B, 1, H, hd]; k, v: [B, S, KV,
    hd]; kv_len: [B] -> [B, 1, H, hd]. ``softcap``: as :func:`_sdpa`.
    """
    b, _, h, hd = q.shape
    kc, vc = jnp.swapaxes(k, 1, 2), jnp.swapaxes(v, 1, 2)  # the cache layout: transposes fold
    kvh, s = kc.shape[1], kc.shape[2]
    qg = q.reshape(b, kvh, h // kvh, hd)  # GQA: query head j reads kv head j // (h / kvh)
    f32 = jnp.promote_types(q.dtype, jnp.float32)
    logits = jnp.einsum("bkgd,bksd->bkgs", qg, kc, preferred_element_type=f32)
    logits = logits * jnp.asarray(1.0 / np.sqrt(hd) if scale is None else scale, f32)
    if softcap is not None:
        logits = jnp.tanh(logits / softcap) * softcap
    live = jnp.arange(s, dtype=jnp.int32)[None, None, None, :] < kv_len[:, None, None, None]
    big_neg = jnp.asarray(-0.7 * float(jnp.finfo(jnp.float32).max), f32)
    probs = jax.nn.softmax(jnp.where(live, logits, big_neg).astype(jnp.float32), axis=-1)
    out = jnp.einsum("bkgs,bksd->bkgd", probs.astype(vc.dtype), vc)
    return out.reshape(b, 1, h, hd)


def restore_order(x: jax.Array, perm: jax.Array | None) -> jax.Array:
    """Undo :func:`prepare_call`'s row compaction on ``x: [B, T, ...]``."""
    if perm is None:
        return x
    inv = jnp.argsort(perm, axis=1)
    return jnp.take_along_axis(x, inv.reshape(inv.shape + (1,) * (x.ndim - 2)), axis=1)


def finish_call(out: jax.Array, cache: Any, new_layers: list, spec: AttnSpec, perm: Any):
    """The end of every model call: ``(logits fp32 or hidden states, updated cache or None)``,
    in the input's token order."""
    out = restore_order(out, perm)
    if cache is None:
        return out, None
    return out, {"layers": tuple(new_layers), "lengths": spec.kv_lengths}
