"""NF4 + double quantization and row-wise int8 against bitsandbytes on CPU (the reference
definition QLoRA's PEFT path uses): every 4-bit code, every absmax level, every dequantized
value."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lora_jax.quant import int8, nf4

pytestmark = pytest.mark.torch
torch = pytest.importorskip("torch")
F = pytest.importorskip("bitsandbytes.functional")

# [out, in] weights: whole rows of 64-blocks, a remainder block, an odd count, > 256 blocks
SHAPES = [(96, 576), (33, 70), (1, 7), (512, 320)]


def _bnb_default_quantize_blockwise(a, code, blocksize):
    """bitsandbytes' default (pure torch, = CUDA semantics) quantize_blockwise kernel; its
    native CPU kernel uses an approximate binary search (see lora_jax/quant/nf4.py)."""
    keys = torch._C.DispatchKeySet(torch._C.DispatchKey.CompositeExplicitAutograd)
    return torch.ops.bitsandbytes.quantize_blockwise.default.redispatch(keys, a, code, blocksize)


_dequantize = jax.jit(nf4.dequantize, static_argnums=1)


def _weights(shape, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g) * 0.05


def test_code_books_are_bitsandbytes():
    np.testing.assert_array_equal(nf4.NF4_CODE, F.get_4bit_type("nf4", device="cpu").numpy())
    np.testing.assert_array_equal(nf4.DYNAMIC_CODE, F.create_dynamic_map().numpy())
    # the paper's NF4: 16 sorted values in [-1, 1] with an exact zero (QLoRA §3)
    assert nf4.NF4_CODE[0] == -1 and nf4.NF4_CODE[-1] == 1 and nf4.NF4_CODE[7] == 0
    assert np.all(np.diff(nf4.NF4_CODE) > 0)


@pytest.mark.parametrize("shape", SHAPES)
def test_nf4_codes_and_absmax_equal_bitsandbytes(shape):
    w = _weights(shape, seed=shape[0])
    q_ref, st = F.quantize_4bit(w, blocksize=64, quant_type="nf4", compress_statistics=False)
    ours = nf4.quantize(w.numpy())
    np.testing.assert_array_equal(ours["codes"], q_ref.numpy().reshape(-1))
    q, absmax = nf4.blockwise_codes(w.numpy().reshape(-1), nf4.NF4_CODE, 64)
    np.testing.assert_array_equal(absmax, st.absmax.numpy())


@pytest.mark.parametrize("shape", [s for s in SHAPES if s[0] * s[1] > 64])  # > 1 absmax
def test_double_quantization_equals_bitsandbytes(shape):
    w = _weights(shape, seed=1 + shape[1])
    q_ref, st = F.quantize_4bit(w, blocksize=64, quant_type="nf4", compress_statistics=True)
    _, absmax = nf4.blockwise_codes(w.numpy().reshape(-1), nf4.NF4_CODE, 64)
    # the offset is the mean of the absmax values (torch's fp32 reduction order may differ by
    # an ulp from ours, so the second level is compared at bitsandbytes' own offset)
    ours = nf4.double_quantize(absmax)
    assert abs(float(ours["offset"]) - float(st.offset)) <= 2 * np.spacing(np.float32(st.offset))
    at_ref = nf4.double_quantize(absmax, offset=st.offset.numpy())
    q2, s2 = _bnb_default_quantize_blockwise(
        torch.from_numpy(absmax) - st.offset, F.create_dynamic_map(), 256
    )
    np.testing.assert_array_equal(at_ref["absmax_q"], q2.numpy())
    np.testing.assert_array_equal(at_ref["absmax_scale"], s2.numpy())
    np.testing.assert_array_equal(at_ref["absmax_scale"], st.state2.absmax.numpy())
    # our dequantizer on bitsandbytes' own state: equal to dequantize_4bit, value for value
    state = {"codes": q_ref.numpy().reshape(-1), "absmax_q": st.absmax.numpy(),
             "absmax_scale": st.state2.absmax.numpy(), "offset": st.offset.numpy()}  # fmt: skip
    state = {k: jnp.asarray(v) for k, v in state.items()}
    ref = F.dequantize_4bit(q_ref, st).numpy().reshape(-1)
    # (jitted, XLA may fuse code·scale + offset into one FMA, one rounding less: ≤ 2 ulp;
    # op by op the values are bit for bit bitsandbytes')
    got = _dequantize(state, w.numel())
    np.testing.assert_allclose(np.asarray(got), ref, rtol=2.4e-7, atol=0)
    # and the full round trip of ours is bitsandbytes' up to its absmax levels
    full = nf4.quantize(w.numpy())
    mine = _dequantize({k: jnp.asarray(v) for k, v in full.items()}, w.numel())
    np.testing.assert_allclose(np.asarray(mine), ref, rtol=0, atol=0.02 * float(w.abs().max()))
    assert not np.allclose(np.asarray(mine), w.numpy().reshape(-1), atol=1e-4)  # it is lossy


def test_int8_rows_equal_bitsandbytes():
    w = _weights((48, 200), seed=3)
    q_ref, stats, _ = torch.ops.bitsandbytes.int8_vectorwise_quant(w.clone())
    ours = int8.quantize(w.numpy())
    np.testing.assert_array_equal(ours["q"], q_ref.numpy())
    np.testing.assert_array_equal(ours["row_absmax"], stats.numpy())
    ref = torch.ops.bitsandbytes.int8_vectorwise_dequant(q_ref, stats).numpy()
    got = int8.dequantize({k: jnp.asarray(v) for k, v in ours.items()})
    np.testing.assert_allclose(np.asarray(got), ref, rtol=1e-7, atol=0)
