"""The Dense layer with unmerged LoRA branches.

``LoraDense`` computes ``y = x·W + b + Σ_blocks s·(drop(x)·A)·B`` where the LoRA factors are
read from the optional ``"lora"`` variable collection at this module's scope, so the model
code never changes per experiment: apply with ``{"params": frozen}`` for the base model and
``{"params": frozen, "lora": lora}`` for the adapted one.

A kernel's output columns are split into equal named ``blocks``: one block for an ordinary
projection (``("q",)`` for ``q_proj``), three for GPT-2's fused ``c_attn`` (``("q", "k", "v")``).
Each block may carry its own adapter, as the original LoRA code's ``MergedLinear`` with
``enable_lora=[True, False, True]`` does (github microsoft/LoRA loralib/layers.py).

The lora collection at this scope: ``{block: {"a": [in, r], "b": [r, out / n_blocks],
"scale": []}}``. ``scale`` (α/r or α/√r) is data, not a trainable parameter: it is wrapped in
``stop_gradient`` and labelled frozen by :func:`lora_jax.lora.optim.trainable_labels`.

Variants (lora_jax.lora.params): PiSSA/OLoRA adapters carry their initial factors ``a0``, ``b0``
and the branch runs on ``[a, a0]`` and ``[b; -b0]`` (so the base acts as PEFT's residual
``W - s·A0·B0`` while the stored, shared, possibly quantized W is untouched). DoRA adds a
magnitude ``m`` per output column: the block's output is ``f·(x·W) + bias + f·s·(x·A)·B`` with
``f = m / ‖W + s·A·B‖`` (PEFT's ``DoraLinearLayer.forward``; the norm is detached, DoRA §4.3,
and computed from ``AᵀW`` and ``AᵀA`` without forming ``W + s·A·B``). With dropout active,
as in PEFT, the ``(f - 1)·x·W`` correction uses the dropped-out input.

The branch has a hand-written backward (:func:`lora_delta`, a ``jax.custom_vjp``): with
``h = x·A`` kept from the forward, ``dB = s·hᵀg``, ``dA = (s·(g·Bᵀ))ᵀ·x`` transposed and
``dx = s·(g·Bᵀ)·Aᵀ``, each contracting over tokens with only small ``[tokens, r]`` /
``[r, ·]`` factors transposed. Plain autodiff gives the same numbers, but XLA:CPU then copies
a transpose of the ``[tokens, out]`` cotangent before ``dB``, which cost more than the
adapter's FLOPs on the MLP's wide projections (all-linear LoRA step 6.7 s -> 3.5 s on SmolLM2).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from lora_jax.lora.params import dora_norm, factors
from lora_jax.quant import frozen_dot, is_quantized

Dtype = Any


def _lora_delta_fwd(x: jax.Array, a: jax.Array, b: jax.Array, scale: jax.Array):
    h = jnp.dot(x, a)
    return jnp.dot(h, b) * scale, (x, a, b, h, scale)


def _lora_delta_bwd(res, g: jax.Array):
    x, a, b, h, scale = res
    n_in, r, n_out = a.shape[0], a.shape[1], b.shape[1]
    x2, h2, g2 = x.reshape(-1, n_in), h.reshape(-1, r), g.reshape(-1, n_out)
    gb = jnp.dot(g2, b.T) * scale  # [N, r]: s·g·Bᵀ
    db = (jnp.dot(h2.T, g2) * scale).astype(b.dtype)  # [r, out]
    da = jnp.dot(gb.T, x2).T.astype(a.dtype)  # [in, r]
    dx = jnp.dot(gb, a.T).reshape(x.shape).astype(x.dtype)
    return dx, da, db, jnp.zeros_like(scale)


@jax.custom_vjp
def lora_delta(x: jax.Array, a: jax.Array, b: jax.Array, scale: jax.Array) -> jax.Array:
    """``s·(x·A)·B``; x: [..., in], a: [in, r], b: [r, out], scale: [] -> [..., out].
    Differentiable in x, a and b (the scale gets a zero cotangent: it is data)."""
    return _lora_delta_fwd(x, a, b, scale)[0]


lora_delta.defvjp(_lora_delta_fwd, _lora_delta_bwd)


class LoraDense(nn.Module):
    """Dense layer, kernel ``[in, features]``, with optional LoRA branches per column block."""

    features: int
    blocks: tuple[str, ...]
    use_bias: bool = True
    dtype: Dtype = jnp.float32  # compute dtype
    param_dtype: Dtype = jnp.float32  # storage dtype of the frozen kernel and bias
    lora_dropout: float = 0.0
    kernel_init: Any = nn.initializers.normal(0.02)

    @nn.compact
    def __call__(self, x: jax.Array, deterministic: bool = True) -> jax.Array:
        # x·W with the frozen kernel; a quantized one (QLoRA) is dequantized on the fly.
        y0 = frozen_dot(self, x, self.features, self.kernel_init, self.param_dtype, self.dtype)
        y = y0
        x = x.astype(self.dtype)
        if self.use_bias:
            bias = self.param("bias", nn.initializers.zeros, (self.features,), self.param_dtype)
            y = y + bias.astype(self.dtype)
        present = [n for n in self.blocks if self.has_variable("lora", n)]
        if not present:
            return y
        xd = x
        if self.lora_dropout > 0.0 and not deterministic:
            keep = 1.0 - self.lora_dropout
            mask = jax.random.bernoulli(self.make_rng("dropout"), keep, x.shape)
            xd = jnp.where(mask, x / keep, 0.0).astype(self.dtype)
        width = self.features // len(self.blocks)
        deltas = {}
        for name in present:
            ad = self.get_variable("lora", name)
            scale = jax.lax.stop_gradient(ad["scale"]).astype(self.dtype)
            a, b = factors(ad, self.dtype)
            deltas[name] = lora_delta(xd, a, b, scale)
            if "m" in ad:  # DoRA: the block's y + (f - 1)·x·W + f·s·(x·A)·B
                j = self.blocks.index(name)
                cols = slice(j * width, (j + 1) * width)
                w = self.get_variable("params", "kernel")
                w = w.dequantize(jnp.float32) if is_quantized(w) else w
                w = w[:, cols]
                norm = jax.lax.stop_gradient(dora_norm(w, a, b, ad["scale"]))
                f = (ad["m"].astype(jnp.float32) / norm).astype(self.dtype)
                base = y0[..., cols] if xd is x else jnp.dot(xd, w.astype(self.dtype))
                # PEFT: result + (f - 1)·base_result + f·s·lora_B(lora_A(x))
                deltas[name] = (f - 1) * base + f * deltas[name]
        if len(self.blocks) == 1:
            return y + deltas[self.blocks[0]]
        parts = jnp.split(y, len(self.blocks), axis=-1) if width else [y]
        parts = [p + deltas[n] if n in deltas else p for p, n in zip(parts, self.blocks)]
        return jnp.concatenate(parts, axis=-1)
