"""The one-token decode attention (lora_jax.models.attention._attend_one) against
``jax.nn.dot_product_attention`` with key lengths, the path it replaces for decode steps.

fp32 at ``jax.default_matmul_precision("highest")``: equal to 1e-6 of the largest output (the
same arithmetic, contracted in another layout). bf16 inputs: within bf16 rounding (2e-2)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lora_jax.models.attention import AttnSpec, attend


@pytest.mark.parametrize("dtype,tol", [(jnp.float32, 1e-6), (jnp.bfloat16, 2e-2)])
@pytest.mark.parametrize("heads,kv_heads", [(4, 4), (6, 2), (9, 3)])
def test_decode_step_attention_equals_library(heads, kv_heads, dtype, tol):
    rng = np.random.default_rng(heads * 10 + kv_heads)
    b, s, hd = 5, 24, 16
    q = jnp.asarray(rng.standard_normal((b, 1, heads, hd)), dtype)
    k = jnp.asarray(rng.standard_normal((b, s, kv_heads, hd)) * 2, dtype)
    v = jnp.asarray(rng.standard_normal((b, s, kv_heads, hd)), dtype)
    lengths = jnp.asarray([1, 7, 24, 13, 0], jnp.int32)  # 0: a filler row
    spec = AttnSpec(kv_lengths=lengths, start=jnp.maximum(lengths - 1, 0), mask=None)
    with jax.default_matmul_precision("highest"):
        got = jax.jit(attend)(q, k, v, spec)
        want = jax.nn.dot_product_attention(q, k, v, key_value_seq_lengths=jnp.maximum(lengths, 1))
    assert got.shape == want.shape == (b, 1, heads, hd)
    got32, want32 = np.asarray(got, np.float32), np.asarray(want, np.float32)
    scale = np.abs(want32).max()
    np.testing.assert_allclose(got32, want32, atol=tol * scale, rtol=0)
    # keys past a row's length do not matter: change them and nothing moves
    k2 = k.at[1, 7:].set(100.0)
    with jax.default_matmul_precision("highest"):
        again = jax.jit(attend)(q, k2, v, spec)
    np.testing.assert_array_equal(np.asarray(again, np.float32)[1], got32[1])
