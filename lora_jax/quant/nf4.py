"""NF4 with blockwise absmax and double quantization, as bitsandbytes defines it.

QLoRA (Dettmers et al. 2023, arXiv 2305.14314 §3) stores a weight as 4-bit NormalFloat codes
with one absmax per block of 64 weights, and quantizes those absmax values again ("double
quantization") to 8 bits with one fp32 scale per block of 256, after subtracting their mean.
This module reproduces bitsandbytes' ``quantize_4bit(A, blocksize=64, quant_type="nf4",
compress_statistics=True)`` and ``dequantize_4bit`` (bitsandbytes/functional.py and
backends/default/ops.py) code for code, in numpy (quantize, once at load) and jnp (dequantize,
inside the jitted matmul). qwix 0.1.8 has an nf4 qtype but neither bitsandbytes' packing nor
its double quantization, so the ~60 lines of glue live here with bitsandbytes as the reference
(tests/quant/test_nf4.py compares every code and value).

Layout: the tensor is flattened row-major (bitsandbytes flattens torch's ``[out, in]`` weight, so
blocks run along the input dimension) and split into blocks of ``blocksize``; two 4-bit codes
per byte, the first element in the high nibble.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

# The 16 NF4 values: quantiles of N(0, 1) normalized to [-1, 1] with an exact zero, as hard-coded
# in bitsandbytes/functional.py get_4bit_type("nf4") (QLoRA paper §3, Appendix E).
NF4_CODE = np.array(
    [-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
     -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
     0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
     0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0],
    dtype=np.float32,
)  # fmt: skip
BLOCKSIZE = 64  # QLoRA §3 / bitsandbytes quantize_4bit default
ABSMAX_BLOCKSIZE = 256  # QLoRA §3 double quantization; bitsandbytes quantize_4bit: blocksize=256


def dynamic_map(signed: bool = True, max_exponent_bits: int = 7, total_bits: int = 8) -> np.ndarray:
    """bitsandbytes' ``create_dynamic_map()``: the 256-value signed dynamic 8-bit code (Dettmers
    2015, arXiv 1511.04561) used for the second-level quantization of the absmax values."""
    data: list[float] = []
    non_sign_bits = total_bits - 1
    additional_items = 2 ** (non_sign_bits - max_exponent_bits) - 1
    for i in range(max_exponent_bits):
        n = int(2 ** (i + non_sign_bits - max_exponent_bits) + 1 if signed
                else 2 ** (i + non_sign_bits - max_exponent_bits + 1) + 1)  # fmt: skip
        bounds = _torch_linspace_f32(0.1, 1.0, n)
        means = (bounds[:-1] + bounds[1:]) / np.float32(2.0)
        data += (np.float32(10 ** (-(max_exponent_bits - 1) + i)) * means).tolist()
        if signed:
            data += (np.float32(-(10 ** (-(max_exponent_bits - 1) + i))) * means).tolist()
    if additional_items > 0:
        bounds = _torch_linspace_f32(0.1, 1.0, additional_items + 1)
        means = (bounds[:-1] + bounds[1:]) / np.float32(2.0)
        data += (np.float32(10 ** (-(max_exponent_bits - 1) + i)) * means).tolist()
        if signed:
            data += (np.float32(-(10 ** (-(max_exponent_bits - 1) + i))) * means).tolist()
    data += [0.0, 1.0]
    data += [0.0] * (2**total_bits - len(data))
    return np.sort(np.asarray(data, dtype=np.float64)).astype(np.float32)


def _torch_linspace_f32(start: float, end: float, steps: int) -> np.ndarray:
    """``torch.linspace(start, end, steps, dtype=float32)`` on CPU, bit for bit: an fp32 step,
    the first half counted from ``start`` and the second from ``end``, each a fused multiply-add
    (aten/src/ATen/native/cpu/RangeFactoriesKernel.cpp); float64 holds the exact product."""
    start32, end32 = np.float64(np.float32(start)), np.float64(np.float32(end))
    step = np.float64(np.float32((np.float32(end) - np.float32(start)) / np.float32(steps - 1)))
    idx = np.arange(steps)
    out = np.where(idx < steps // 2, start32 + step * idx, end32 - step * (steps - 1 - idx))
    return out.astype(np.float32)


DYNAMIC_CODE = dynamic_map()


def blockwise_codes(
    flat: np.ndarray, code: np.ndarray, blocksize: int
) -> tuple[np.ndarray, np.ndarray]:
    """bitsandbytes' blockwise absmax quantization onto a sorted ``code`` (backends/default/
    ops.py ``quantize_4bit`` / ``quantize_blockwise``, the definition its CUDA kernels share):
    scale each block by ``1/absmax``, clamp to [-1, 1], take the nearest code value (bucketize
    against the midpoints). Returns ``(indices uint8 [n], absmax fp32 [ceil(n / blocksize)])``.

    bitsandbytes' native CPU 8-bit quantizer (csrc/common.cpp) instead divides and uses an
    approximate binary search that sometimes lands one code off; the default op is the reference.
    """
    n = flat.size
    rem = n % blocksize
    full = n - rem
    a = flat[:full].reshape(-1, blocksize)
    absmax = np.abs(a).max(axis=-1) if full else np.zeros((0,), np.float32)
    inv = np.float32(1.0) / np.maximum(absmax, np.float32(1e-38))
    scaled = np.clip(a * inv[:, None], -1, 1).reshape(-1)
    if rem:
        am = np.maximum(np.abs(flat[full:]).max(), np.float32(1e-38))
        absmax = np.concatenate([absmax, am[None]])
        scaled = np.concatenate([scaled, np.clip(flat[full:] / am, -1, 1)])
    bounds = (code[:-1] + code[1:]) / np.float32(2)
    return np.searchsorted(bounds, scaled, side="left").astype(np.uint8), absmax.astype(np.float32)


def double_quantize(absmax: np.ndarray, offset: np.floating | None = None) -> dict[str, np.ndarray]:
    """Second-level quantization of the block absmax values (QLoRA §3): subtract their mean,
    8-bit dynamic codes with one fp32 scale per 256 (bitsandbytes ``quantize_4bit``,
    compress_statistics=True). ``offset`` defaults to the mean (computed in float64)."""
    if offset is None:
        offset = np.float32(absmax.astype(np.float64).mean())
    offset = np.float32(offset)
    absmax_q, absmax_scale = blockwise_codes(absmax - offset, DYNAMIC_CODE, ABSMAX_BLOCKSIZE)
    return {"absmax_q": absmax_q, "absmax_scale": absmax_scale,
            "offset": np.asarray(offset, np.float32)}  # fmt: skip


def quantize(w: np.ndarray, blocksize: int = BLOCKSIZE) -> dict[str, np.ndarray]:
    """NF4 + double quantization of ``w`` (any shape, flattened row-major).

    Returns ``{"codes": uint8 [ceil(n/2)], "absmax_q": uint8 [nb], "absmax_scale": fp32
    [ceil(nb/256)], "offset": fp32 []}`` with ``nb = ceil(n / blocksize)``.
    """
    flat = np.asarray(w, dtype=np.float32).reshape(-1)
    q, absmax = blockwise_codes(flat, NF4_CODE, blocksize)
    if q.size % 2:
        q = np.concatenate([q, np.array([7], np.uint8)])  # bitsandbytes pads with 0.0 -> code 7
    return {"codes": (q[::2] << 4) | q[1::2], **double_quantize(absmax)}


def _blockwise_scale(values: jax.Array, scale: jax.Array, blocksize: int) -> jax.Array:
    """``values [n] * scale[i // blocksize]`` (fp32), as a reshape and a broadcast."""
    n = values.shape[0]
    pad = -n % blocksize
    if pad:
        values = jnp.pad(values, (0, pad))
    return (values.reshape(-1, blocksize) * scale[:, None]).reshape(-1)[:n]


def dequantize(data: dict[str, jax.Array], n: int, blocksize: int = BLOCKSIZE) -> jax.Array:
    """Inverse of :func:`quantize` in jnp: fp32 ``[n]`` (reshape to the tensor's shape)."""
    absmax = (
        _blockwise_scale(
            jnp.asarray(DYNAMIC_CODE)[data["absmax_q"].astype(jnp.int32)],
            data["absmax_scale"],
            ABSMAX_BLOCKSIZE,
        )
        + data["offset"]
    )
    codes = data["codes"]
    idx = jnp.stack([codes >> 4, codes & 0xF], axis=-1).reshape(-1)[:n].astype(jnp.int32)
    return _blockwise_scale(jnp.asarray(NF4_CODE)[idx], absmax, blocksize)
