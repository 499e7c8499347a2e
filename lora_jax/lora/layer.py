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
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from lora_jax.quant import frozen_dot

Dtype = Any


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
        y = frozen_dot(self, x, self.features, self.kernel_init, self.param_dtype, self.dtype)
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
            h = jnp.dot(xd, ad["a"].astype(self.dtype))
            deltas[name] = jnp.dot(h, ad["b"].astype(self.dtype)) * scale
        if len(self.blocks) == 1:
            return y + deltas[self.blocks[0]]
        parts = jnp.split(y, len(self.blocks), axis=-1) if width else [y]
        parts = [p + deltas[n] if n in deltas else p for p, n in zip(parts, self.blocks)]
        return jnp.concatenate(parts, axis=-1)
