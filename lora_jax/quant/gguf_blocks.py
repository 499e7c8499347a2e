"""llama.cpp block formats dequantized in jnp, for GGUF kernels kept in their own blocks.

Ports of ``gguf.quants`` (gguf-py, the numpy reference the GGUF loader uses) for the formats
lora-jax keeps on the fly: Q8_0, Q4_0, Q4_1, Q5_0 (32 weights a block) and Q4_K, Q6_K (256
weights a super-block). A GGUF matrix is stored row by row (``[rows, bytes_per_row]`` uint8, ``rows`` =
output features of a Linear), each row a run of blocks along the input dimension, so whole rows
can be permuted (llama.cpp's q/k rotary permutation) without touching a block.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

QK_K = 256
# format -> (weights per block, bytes per block); ggml-common.h block_q8_0, block_q4_0, ...
FORMATS: dict[str, tuple[int, int]] = {
    "q8_0": (32, 34),
    "q4_0": (32, 18),
    "q4_1": (32, 20),
    "q5_0": (32, 22),
    "q4_k": (QK_K, 144),
    "q6_k": (QK_K, 210),
}


def _f16(b: jax.Array) -> jax.Array:
    """Little-endian fp16 from ``[..., 2]`` uint8 -> fp32 ``[..., 1]``."""
    u = b[..., 0:1].astype(jnp.uint16) | (b[..., 1:2].astype(jnp.uint16) << 8)
    return jax.lax.bitcast_convert_type(u, jnp.float16).astype(jnp.float32)


def _nibbles(qs: jax.Array, group: int) -> jax.Array:
    """``[n, k]`` bytes -> ``[n, 2k]``: per ``group`` bytes, the low nibbles then the high ones."""
    n = qs.shape[0]
    q = qs.reshape(n, -1, 1, group) >> jnp.array([0, 4], jnp.uint8).reshape(1, 1, 2, 1)
    return (q & 0x0F).reshape(n, -1)


def _q8_0(b: jax.Array) -> jax.Array:
    d = _f16(b[:, :2])
    x = jax.lax.bitcast_convert_type(b[:, 2:], jnp.int8).astype(jnp.float32)
    return x * d


def _q4_0(b: jax.Array) -> jax.Array:
    d = _f16(b[:, :2])
    q = _nibbles(b[:, 2:], 16).astype(jnp.int8) - jnp.int8(8)
    return d * q.astype(jnp.float32)


def _q4_1(b: jax.Array) -> jax.Array:
    d, m = _f16(b[:, :2]), _f16(b[:, 2:4])
    return (d * _nibbles(b[:, 4:], 16).astype(jnp.float32)) + m


def _q5_0(b: jax.Array) -> jax.Array:
    """fp16 d, 32 high bits (one per weight, little-endian uint32), 16 bytes of low nibbles;
    w = d·(q - 16) with q = low | high << 4 (gguf.quants Q5_0)."""
    d = _f16(b[:, :2])
    qh = b[:, 2:6].astype(jnp.uint32)
    qh = qh[:, 0:1] | (qh[:, 1:2] << 8) | (qh[:, 2:3] << 16) | (qh[:, 3:4] << 24)
    hi = ((qh >> jnp.arange(32, dtype=jnp.uint32)[None, :]) & 1).astype(jnp.uint8)
    q = (_nibbles(b[:, 6:], 16) | (hi << 4)).astype(jnp.int8) - jnp.int8(16)
    return d * q.astype(jnp.float32)


def _q4_k(b: jax.Array) -> jax.Array:
    n = b.shape[0]
    d, dmin = _f16(b[:, :2]), _f16(b[:, 2:4])
    s = b[:, 4:16].reshape(n, 3, 4)  # 6-bit scales and mins of 8 sub-blocks (gguf Q4_K)
    sd, sm, smd = s[:, 0], s[:, 1], s[:, 2]
    sc = jnp.concatenate([sd & 0x3F, (smd & 0x0F) | ((sd >> 2) & 0x30)], axis=-1)
    mn = jnp.concatenate([sm & 0x3F, (smd >> 4) | ((sm >> 2) & 0x30)], axis=-1)
    dd = (d * sc.astype(jnp.float32)).reshape(n, -1, 1)
    dm = (dmin * mn.astype(jnp.float32)).reshape(n, -1, 1)
    q = _nibbles(b[:, 16:], 32).reshape(n, -1, 32).astype(jnp.float32)
    return (dd * q - dm).reshape(n, QK_K)


def _q6_k(b: jax.Array) -> jax.Array:
    n = b.shape[0]
    ql, qh = b[:, :128], b[:, 128:192]
    scales = jax.lax.bitcast_convert_type(b[:, 192:208], jnp.int8).astype(jnp.float32)
    d = (_f16(b[:, 208:210]) * scales).reshape(n, QK_K // 16, 1)
    lo = _nibbles(ql, 64).reshape(n, -1, 32)
    hi = qh.reshape(n, -1, 1, 32) >> jnp.array([0, 2, 4, 6], jnp.uint8).reshape(1, 1, 4, 1)
    hi = (hi & 0x03).reshape(n, -1, 32)
    q = (lo | (hi << 4)).astype(jnp.int8) - jnp.int8(32)
    return (d * q.reshape(n, QK_K // 16, -1).astype(jnp.float32)).reshape(n, QK_K)


_DEQUANT = {"q8_0": _q8_0, "q4_0": _q4_0, "q4_1": _q4_1, "q5_0": _q5_0, "q4_k": _q4_k,
            "q6_k": _q6_k}  # fmt: skip


def dequantize(kind: str, blocks: jax.Array, cols: int) -> jax.Array:
    """``blocks: [rows, bytes_per_row]`` uint8 of format ``kind`` -> fp32 ``[rows, cols]``."""
    size, nbytes = FORMATS[kind]
    rows = blocks.shape[0]
    flat = blocks.reshape(rows * (cols // size), nbytes)
    return _DEQUANT[kind](flat).reshape(rows, cols)
