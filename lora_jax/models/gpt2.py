"""GPT-2 (Radford et al. 2019) as a Flax linen module, numerically matching transformers'
``GPT2LMHeadModel``: pre-LayerNorm blocks, fused ``c_attn``, learned positions, tied LM head.

Parameter tree (LoRA targeting and PEFT export rely on these names)::

    wte/embedding [V, d]   wpe/embedding [P, d]   ln_f/{scale,bias}
    h_{i}/ln_1, h_{i}/attn/c_attn/{kernel [d, 3d], bias}, h_{i}/attn/c_proj, h_{i}/ln_2,
    h_{i}/mlp/c_fc [d, 4d], h_{i}/mlp/c_proj [4d, d]
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from lora_jax.errors import ConfigError
from lora_jax.lora.layer import LoraDense
from lora_jax.models import attention as att
from lora_jax.models.config import ModelConfig
from lora_jax.models.layers import run_layers

# Module path after the layer scope -> LoRA column blocks. The single source of truth for GPT-2.
# c_attn fuses q, k, v as the original LoRA code's MergedLinear does (microsoft/LoRA loralib).
LORA_MODULES: dict[str, tuple[str, ...]] = {
    "attn.c_attn": ("q", "k", "v"),
    "attn.c_proj": ("o",),
    "mlp.c_fc": ("up",),
    "mlp.c_proj": ("down",),
}

ACTIVATIONS = {
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_fast": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "relu": jax.nn.relu,
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,
}


def activation(name: str):
    """The activation named by a HF config (``activation_function`` / ``hidden_act``)."""
    if name not in ACTIVATIONS:
        raise ConfigError(f"unsupported activation {name!r}; supported: {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]


class _Common(nn.Module):
    cfg: ModelConfig
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    lora_dropout: float = 0.0

    def dense(self, features: int, path: str, name: str, use_bias: bool = True) -> LoraDense:
        return LoraDense(
            features,
            blocks=LORA_MODULES[path],
            use_bias=use_bias,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            lora_dropout=self.lora_dropout,
            name=name,
        )

    def layer_norm(self, name: str) -> nn.LayerNorm:
        return nn.LayerNorm(
            epsilon=self.cfg.norm_eps,
            dtype=jnp.float32,
            param_dtype=self.param_dtype,
            use_fast_variance=False,
            name=name,
        )


class GPT2Attention(_Common):
    @nn.compact
    def __call__(self, x, spec, layer_cache, deterministic):
        b, t, d = x.shape
        h, hd = self.cfg.num_heads, self.cfg.head_dim
        qkv = self.dense(3 * d, "attn.c_attn", "c_attn")(x, deterministic)
        q, k, v = (y.reshape(b, t, h, hd) for y in jnp.split(qkv, 3, axis=-1))
        k, v, new_cache = att.write_and_read(layer_cache, k, v, spec)
        out = att.attend(q, k, v, spec).reshape(b, t, h * hd)
        return self.dense(d, "attn.c_proj", "c_proj")(out, deterministic), new_cache


class GPT2MLP(_Common):
    @nn.compact
    def __call__(self, x, deterministic):
        act = activation(self.cfg.activation)
        y = act(self.dense(self.cfg.intermediate_size, "mlp.c_fc", "c_fc")(x, deterministic))
        return self.dense(self.cfg.hidden_size, "mlp.c_proj", "c_proj")(y, deterministic)


class GPT2Block(_Common):
    deterministic: bool = True

    @nn.compact
    def __call__(self, x, positions, spec, layer_cache):
        kw = dict(cfg=self.cfg, dtype=self.dtype, param_dtype=self.param_dtype,
                  lora_dropout=self.lora_dropout)  # fmt: skip
        y = self.layer_norm("ln_1")(x).astype(self.dtype)
        y, new_cache = GPT2Attention(**kw, name="attn")(y, spec, layer_cache, self.deterministic)
        x = x + y
        y = self.layer_norm("ln_2")(x).astype(self.dtype)
        x = x + GPT2MLP(**kw, name="mlp")(y, self.deterministic)
        return x, new_cache


class GPT2LMHeadModel(_Common):
    """GPT-2 LM. ``__call__(input_ids [B, T], attention_mask, positions, cache, deterministic,
    seq_lengths, return_hidden, segment_ids)`` -> ``(logits [B, T, V] fp32 — or the final hidden states
    [B, T, d] with return_hidden — , new_cache or None)``; see :mod:`lora_jax.models.attention`.
    ``scan_layers`` / ``remat``: see :mod:`lora_jax.models.layers`."""

    scan_layers: bool = False
    remat: str = "none"

    @nn.compact
    def __call__(
        self,
        input_ids: jax.Array,
        attention_mask: jax.Array | None = None,
        positions: jax.Array | None = None,
        cache: att.Cache | None = None,
        deterministic: bool = True,
        seq_lengths: jax.Array | None = None,
        return_hidden: bool = False,
        segment_ids: jax.Array | None = None,
    ) -> tuple[jax.Array, att.Cache | None]:
        cfg = self.cfg
        input_ids, positions, spec, perm = att.prepare_call(
            input_ids, attention_mask, positions, cache, cfg, seq_lengths, segment_ids
        )
        embed = dict(dtype=self.dtype, param_dtype=self.param_dtype,
                     embedding_init=nn.initializers.normal(0.02))  # fmt: skip
        wte = nn.Embed(cfg.vocab_size, cfg.hidden_size, **embed, name="wte")
        wpe = nn.Embed(cfg.max_position_embeddings, cfg.hidden_size, **embed, name="wpe")
        x = wte(input_ids) + wpe(positions)
        kw = dict(cfg=cfg, dtype=self.dtype, param_dtype=self.param_dtype,
                  lora_dropout=self.lora_dropout, deterministic=deterministic)  # fmt: skip
        x, new_layers = run_layers(
            GPT2Block, kw, "h", cfg.num_layers, x, positions, spec, cache,
            self.scan_layers, self.remat,
        )  # fmt: skip
        x = self.layer_norm("ln_f")(x).astype(self.dtype)
        if return_hidden:
            return att.finish_call(x, cache, new_layers, spec, perm)
        logits = jnp.dot(x, wte.embedding.T.astype(self.dtype), preferred_element_type=jnp.float32)
        return att.finish_call(logits, cache, new_layers, spec, perm)

    def head_kernel(self, params: dict) -> jax.Array:
        """The LM head as a ``[d, V]`` matrix (tied: the token embedding transposed)."""
        return params["wte"]["embedding"].T
