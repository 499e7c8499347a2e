"""The Llama family (Llama 2/3, Mistral, Qwen2/2.5, Qwen3, Phi-3) as a Flax linen module,
numerically matching transformers' ``LlamaForCausalLM`` (and Mistral/Qwen2/Qwen3/Phi-3's):
RMSNorm, rotary positions (default / linear / llama3 / longrope scaling, partial rotary dims),
grouped-query attention, SwiGLU MLP, tied or untied LM head, optional q/k/v bias (Qwen2),
per-head q/k RMSNorm (Qwen3), sliding-window attention in all layers (Mistral, Phi-3) or in
those ``layer_types`` names (Qwen2/Qwen3).

Phi-3 stores q/k/v as one ``qkv_proj`` ([q; k; v] rows, k and v of the KV heads' width) and
gate/up as one ``gate_up_proj``; its architecture is otherwise Llama's. Here they are kept
apart (:data:`PHI3_FUSED`; the loader splits them, the HF and PEFT exports fuse them back), so a
LoRA block on ``q_proj`` is exactly one on the q rows of ``qkv_proj`` (the original LoRA code's
``MergedLinear``, as for GPT-2's ``c_attn``), whatever the head counts.

Parameter tree (LoRA targeting and PEFT export rely on these names)::

    embed_tokens/embedding [V, d]   norm/scale [d]   lm_head/kernel [d, V] (untied only)
    layers_{i}/input_layernorm/scale, layers_{i}/post_attention_layernorm/scale,
    layers_{i}/self_attn/{q,k,v,o}_proj/{kernel [in, out], bias?},
    layers_{i}/self_attn/{q,k}_norm/scale [head_dim] (Qwen3 only),
    layers_{i}/mlp/{gate,up,down}_proj/{kernel, bias?}
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from lora_jax.errors import ConfigError
from lora_jax.lora.layer import LoraDense
from lora_jax.models import attention as att
from lora_jax.models.config import ModelConfig
from lora_jax.models.gpt2 import activation
from lora_jax.models.layers import run_layers

# Module path after the layer scope -> LoRA column blocks. The single source of truth for Llama.
LORA_MODULES: dict[str, tuple[str, ...]] = {
    "self_attn.q_proj": ("q",),
    "self_attn.k_proj": ("k",),
    "self_attn.v_proj": ("v",),
    "self_attn.o_proj": ("o",),
    "mlp.gate_proj": ("gate",),
    "mlp.up_proj": ("up",),
    "mlp.down_proj": ("down",),
}

# Phi-3's fused HF modules -> the modules kept apart here, in row order of the fused weight.
PHI3_FUSED: dict[str, tuple[str, ...]] = {
    "self_attn.qkv_proj": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
    "mlp.gate_up_proj": ("mlp.gate_proj", "mlp.up_proj"),
}


def longrope(cfg: ModelConfig) -> tuple[np.ndarray, np.ndarray, int, float] | None:
    """LongRoPE (Phi-3 128k, Phi-3.5, Phi-4-mini) as transformers' ``_compute_longrope_parameters``:
    ``(short inv_freq, long inv_freq, original max positions, attention factor)``, or None for
    other rope types. The long factors apply when a call's positions pass the original length
    (transformers' ``longrope_frequency_update``); cos/sin are scaled by the attention factor."""
    rs = cfg.rope_scaling
    if not rs or rs.get("rope_type", rs.get("type")) != "longrope":
        return None
    dim = int(cfg.head_dim * cfg.partial_rotary_factor)
    orig = int(rs.get("original_max_position_embeddings") or cfg.max_position_embeddings)
    factor = rs.get("factor") or cfg.max_position_embeddings / orig
    att = rs.get("attention_factor")
    if att is None:
        att = 1.0 if factor <= 1.0 else math.sqrt(1 + math.log(factor) / math.log(orig))
    powers = np.float32(cfg.rope_theta) ** (
        np.arange(0, dim, 2, dtype=np.int64).astype(np.float32) / dim
    )
    short = 1.0 / (np.asarray(rs["short_factor"], np.float32) * powers)
    long = 1.0 / (np.asarray(rs["long_factor"], np.float32) * powers)
    return short.astype(np.float32), long.astype(np.float32), orig, float(att)


def rope_inv_freq(cfg: ModelConfig) -> np.ndarray:
    """Inverse frequencies ``[head_dim / 2]`` as transformers' ``modeling_rope_utils`` computes
    them for rope types default, linear and llama3 (Llama 3.1's ``_compute_llama3_parameters``)."""
    dim = int(cfg.head_dim * cfg.partial_rotary_factor)  # Phi-3: RoPE on part of each head
    inv = 1.0 / (cfg.rope_theta ** (np.arange(0, dim, 2, dtype=np.int64).astype(np.float32) / dim))
    rs = cfg.rope_scaling
    kind = None if not rs else rs.get("rope_type", rs.get("type", "default"))
    if kind in (None, "default"):
        return inv
    if kind == "linear":
        return inv / float(rs["factor"])
    if kind == "longrope":  # the short factors (positions within the original length)
        return longrope(cfg)[0]
    if kind == "llama3":
        factor, lo, hi = (
            float(rs["factor"]),
            float(rs["low_freq_factor"]),
            float(rs["high_freq_factor"]),
        )
        old = float(rs["original_max_position_embeddings"])
        wavelen = 2 * math.pi / inv
        out = np.where(wavelen > old / lo, inv / factor, inv)
        smooth = (old / wavelen - lo) / (hi - lo)
        smoothed = (1 - smooth) * out / factor + smooth * out
        medium = ~(wavelen < old / hi) & ~(wavelen > old / lo)
        return np.where(medium, smoothed, out).astype(np.float32)
    raise ConfigError(
        f"unsupported rope_scaling type {kind!r}; lora-jax implements default, linear, llama3 "
        "and longrope"
    )


def apply_rope(
    x: jax.Array, positions: jax.Array, inv_freq: Any, attention_factor: float = 1.0
) -> jax.Array:
    """Rotate ``x: [B, T, H, hd]`` by ``positions: [B, T]`` (HF's rotate_half layout). With
    fewer frequencies than ``hd / 2`` (Phi-3's partial_rotary_factor) only the first
    ``2·len(inv_freq)`` dims of each head rotate; the rest pass through. ``attention_factor``
    scales cos and sin (LongRoPE)."""
    freqs = positions.astype(jnp.float32)[..., None] * jnp.asarray(inv_freq)  # [B, T, rot/2]
    emb = jnp.concatenate([freqs, freqs], axis=-1)[:, :, None, :]
    cos, sin = jnp.cos(emb), jnp.sin(emb)
    if attention_factor != 1.0:
        cos, sin = cos * attention_factor, sin * attention_factor
    x32 = x.astype(jnp.float32)
    rot = emb.shape[-1]
    x32, rest = x32[..., :rot], x32[..., rot:]
    x1, x2 = jnp.split(x32, 2, axis=-1)
    rotated = jnp.concatenate([-x2, x1], axis=-1)
    out = x32 * cos + rotated * sin
    if rest.shape[-1]:
        out = jnp.concatenate([out, rest], axis=-1)
    return out.astype(x.dtype)


class RMSNorm(nn.Module):
    """``x / sqrt(mean(x^2) + eps) * (offset + scale)``, computed in fp32; returns ``dtype``.
    ``offset``: 0 (Llama), 1 (Gemma stores the weight minus one; initialised to zero)."""

    eps: float
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    offset: float = 0.0

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        init = nn.initializers.zeros if self.offset else nn.initializers.ones
        scale = self.param("scale", init, (x.shape[-1],), self.param_dtype)
        x32 = x.astype(jnp.float32)
        y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return (y * (self.offset + scale.astype(jnp.float32))).astype(self.dtype)


class LMHead(nn.Module):
    """Untied output projection, kernel ``[d, V]``; logits accumulate in fp32."""

    features: int
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        init = nn.initializers.normal(0.02)
        kernel = self.param("kernel", init, (x.shape[-1], self.features), self.param_dtype)
        return jnp.dot(
            x.astype(self.dtype), kernel.astype(self.dtype), preferred_element_type=jnp.float32
        )


class LlamaCommon(nn.Module):
    """Fields and helpers shared by the Llama-like modules (Gemma subclasses it too)."""

    cfg: ModelConfig
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    lora_dropout: float = 0.0

    def dense(self, features: int, path: str, use_bias: bool) -> LoraDense:
        return LoraDense(
            features,
            blocks=LORA_MODULES[path],
            use_bias=use_bias,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            lora_dropout=self.lora_dropout,
            name=path.split(".")[-1],
        )

    def norm(self, name: str) -> RMSNorm:
        return RMSNorm(self.cfg.norm_eps, self.dtype, self.param_dtype, name=name)

    @property
    def kw(self) -> dict[str, Any]:
        return dict(cfg=self.cfg, dtype=self.dtype, param_dtype=self.param_dtype,
                    lora_dropout=self.lora_dropout)  # fmt: skip


class LlamaAttention(LlamaCommon):
    window: int | None = None  # this layer's sliding window (cfg.window(layer))

    @nn.compact
    def __call__(self, x, positions, spec, layer_cache, deterministic):
        cfg = self.cfg
        b, t, _ = x.shape
        h, kvh, hd = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        qkv_bias = cfg.attention_bias
        o_bias = cfg.attention_bias and cfg.model_type != "qwen2"  # Qwen2: q/k/v bias only
        q = self.dense(h * hd, "self_attn.q_proj", qkv_bias)(x, deterministic)
        k = self.dense(kvh * hd, "self_attn.k_proj", qkv_bias)(x, deterministic)
        v = self.dense(kvh * hd, "self_attn.v_proj", qkv_bias)(x, deterministic)
        q, k = q.reshape(b, t, h, hd), k.reshape(b, t, kvh, hd)
        if cfg.qk_norm:  # Qwen3: RMSNorm over each head's dims, before RoPE
            q, k = self.norm("q_norm")(q), self.norm("k_norm")(k)
        lr = longrope(cfg)
        if lr is None:
            inv_freq, factor = rope_inv_freq(cfg), 1.0
        else:  # the long factors once this call's positions pass the original length
            short, long, orig, factor = lr
            inv_freq = jnp.where(jnp.max(positions) + 1 > orig, long, short)
        q = apply_rope(q, positions, inv_freq, factor)
        k = apply_rope(k, positions, inv_freq, factor)
        k, v, new_cache = att.write_and_read(layer_cache, k, v.reshape(b, t, kvh, hd), spec)
        out = att.attend(q, k, v, spec, self.window).reshape(b, t, h * hd)
        return self.dense(cfg.hidden_size, "self_attn.o_proj", o_bias)(
            out, deterministic
        ), new_cache


class LlamaMLP(LlamaCommon):
    @nn.compact
    def __call__(self, x, deterministic):
        cfg, bias = self.cfg, self.cfg.mlp_bias
        act = activation(cfg.activation)
        gate = self.dense(cfg.intermediate_size, "mlp.gate_proj", bias)(x, deterministic)
        up = self.dense(cfg.intermediate_size, "mlp.up_proj", bias)(x, deterministic)
        return self.dense(cfg.hidden_size, "mlp.down_proj", bias)(act(gate) * up, deterministic)


class LlamaBlock(LlamaCommon):
    deterministic: bool = True
    window: int | None = None  # this layer's sliding window

    @nn.compact
    def __call__(self, x, positions, spec, layer_cache):
        y = self.norm("input_layernorm")(x)
        y, new_cache = LlamaAttention(**self.kw, window=self.window, name="self_attn")(
            y, positions, spec, layer_cache, self.deterministic
        )
        x = x + y
        y = self.norm("post_attention_layernorm")(x)
        return x + LlamaMLP(**self.kw, name="mlp")(y, self.deterministic), new_cache


class LlamaForCausalLM(LlamaCommon):
    """Llama-family LM. ``__call__(input_ids [B, T], attention_mask, positions, cache,
    deterministic, seq_lengths, return_hidden, segment_ids)`` -> ``(logits [B, T, V] fp32 — or the final
    hidden states [B, T, d] with return_hidden — , new_cache or None)``; see
    :mod:`lora_jax.models.attention`. ``scan_layers`` / ``remat``: :mod:`lora_jax.models.layers`."""

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
        embed = nn.Embed(
            cfg.vocab_size,
            cfg.hidden_size,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            embedding_init=nn.initializers.normal(0.02),
            name="embed_tokens",
        )
        x = embed(input_ids)
        x, new_layers = run_layers(
            LlamaBlock, {**self.kw, "deterministic": deterministic}, "layers", cfg.num_layers,
            x, positions, spec, cache, self.scan_layers, self.remat,
            layer_kw=lambda i: {"window": cfg.window(i)},
        )  # fmt: skip
        x = self.norm("norm")(x)
        if return_hidden:
            return att.finish_call(x, cache, new_layers, spec, perm)
        if cfg.tie_word_embeddings:
            logits = jnp.dot(
                x, embed.embedding.T.astype(self.dtype), preferred_element_type=jnp.float32
            )
        else:
            logits = LMHead(cfg.vocab_size, self.dtype, self.param_dtype, name="lm_head")(x)
        return att.finish_call(logits, cache, new_layers, spec, perm)

    def head_kernel(self, params: dict) -> jax.Array:
        """The LM head as a ``[d, V]`` matrix (tied: the token embedding transposed)."""
        if self.cfg.tie_word_embeddings:
            return params["embed_tokens"]["embedding"].T
        return params["lm_head"]["kernel"]
