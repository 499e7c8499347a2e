"""Gemma 2 and Gemma 3 (text) as a Flax linen module, numerically matching transformers'
``Gemma2ForCausalLM`` / ``Gemma3ForCausalLM`` (modeling_gemma2.py / modeling_gemma3.py).

What differs from the Llama family (:mod:`lora_jax.models.llama`, whose rotary, Dense and
LM-head pieces this reuses):

- token embeddings times √hidden, the factor rounded to the embedding's dtype first (HF's
  ``embed_scale.to(weight.dtype)``: 55.4256 becomes 55.5 in bfloat16);
- RMSNorm scales by ``1 + w`` (checkpoints store w - 1), and every block norms four times:
  before and after attention, before and after the MLP (the "sandwich");
- attention scores scaled by ``query_pre_attn_scalar^-0.5`` instead of ``head_dim^-0.5``;
- sliding-window layers alternate with global ones (``layer_types``: Gemma 2 every other
  layer, Gemma 3 five in six); Gemma 3's sliding layers use their own RoPE base
  (``rope_local_base_freq``, 10k) and its global ones ``rope_theta`` (1M) with any scaling;
- Gemma 2 soft-caps the attention scores (``attn_logit_softcapping``) and the logits
  (``final_logit_softcapping``): ``c·tanh(x / c)``; Gemma 3 has neither by default but honours
  a config that sets the final one;
- Gemma 3 RMS-normalises each head's q and k (``q_norm``/``k_norm``, also ``1 + w``) before RoPE;
- GeGLU MLP: ``down(gelu_tanh(gate(x)) · up(x))``; tied LM head.

Parameter tree (the Llama names plus the extra norms; LoRA targets are Llama's)::

    embed_tokens/embedding [V, d]   norm/scale [d]
    layers_{i}/{input,post_attention,pre_feedforward,post_feedforward}_layernorm/scale [d]
    layers_{i}/self_attn/{q,k,v,o}_proj/kernel [in, out], layers_{i}/self_attn/{q,k}_norm/scale
    [head_dim] (Gemma 3), layers_{i}/mlp/{gate,up,down}_proj/kernel
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from lora_jax.errors import ConfigError
from lora_jax.models import attention as att
from lora_jax.models.config import SLIDING, ModelConfig
from lora_jax.models.gpt2 import activation
from lora_jax.models.layers import run_layers
from lora_jax.models.llama import (
    LORA_MODULES,
    LlamaCommon,
    LMHead,
    RMSNorm,
    apply_rope,
    rope_inv_freq,
)

__all__ = ["LORA_MODULES", "GemmaForCausalLM"]


def softcap(x: jax.Array, cap: float | None) -> jax.Array:
    """``cap·tanh(x / cap)`` (None: x unchanged)."""
    return x if cap is None else jnp.tanh(x / cap) * cap


def is_sliding(cfg: ModelConfig, layer: int) -> bool:
    return bool(cfg.layer_types) and cfg.layer_types[layer] == SLIDING


def layer_rope(cfg: ModelConfig, sliding: bool) -> ModelConfig:
    """The config whose RoPE a layer uses: Gemma 3's sliding layers take the local base and no
    scaling (transformers' ``rope_parameters["sliding_attention"]``)."""
    if sliding and cfg.rope_local_theta is not None:
        return cfg.replace(rope_theta=cfg.rope_local_theta, rope_scaling=None)
    return cfg


class _GemmaCommon(LlamaCommon):
    def norm(self, name: str) -> RMSNorm:
        return RMSNorm(self.cfg.norm_eps, self.dtype, self.param_dtype, offset=1.0, name=name)


class GemmaAttention(_GemmaCommon):
    sliding: bool = False  # a sliding-window layer (layer_types)

    @nn.compact
    def __call__(self, x, positions, spec, layer_cache, deterministic):
        cfg = self.cfg
        b, t, _ = x.shape
        h, kvh, hd = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        bias = cfg.attention_bias
        q = self.dense(h * hd, "self_attn.q_proj", bias)(x, deterministic).reshape(b, t, h, hd)
        k = self.dense(kvh * hd, "self_attn.k_proj", bias)(x, deterministic)
        v = self.dense(kvh * hd, "self_attn.v_proj", bias)(x, deterministic)
        k, v = k.reshape(b, t, kvh, hd), v.reshape(b, t, kvh, hd)
        if cfg.qk_norm:  # Gemma 3
            q, k = self.norm("q_norm")(q), self.norm("k_norm")(k)
        inv_freq = rope_inv_freq(layer_rope(cfg, self.sliding))
        q, k = apply_rope(q, positions, inv_freq), apply_rope(k, positions, inv_freq)
        k, v, new_cache = att.write_and_read(layer_cache, k, v, spec)
        window = cfg.sliding_window if self.sliding else None
        out = att.attend(q, k, v, spec, window, scale=cfg.attn_scale,
                         softcap=cfg.attn_logit_softcapping)  # fmt: skip
        o = self.dense(cfg.hidden_size, "self_attn.o_proj", bias)
        return o(out.reshape(b, t, h * hd), deterministic), new_cache


class GemmaMLP(_GemmaCommon):
    @nn.compact
    def __call__(self, x, deterministic):
        cfg = self.cfg
        act = activation(cfg.activation)
        gate = self.dense(cfg.intermediate_size, "mlp.gate_proj", False)(x, deterministic)
        up = self.dense(cfg.intermediate_size, "mlp.up_proj", False)(x, deterministic)
        return self.dense(cfg.hidden_size, "mlp.down_proj", False)(act(gate) * up, deterministic)


class GemmaBlock(_GemmaCommon):
    deterministic: bool = True
    sliding: bool = False

    @nn.compact
    def __call__(self, x, positions, spec, layer_cache):
        y = self.norm("input_layernorm")(x)
        y, new_cache = GemmaAttention(**self.kw, sliding=self.sliding, name="self_attn")(
            y, positions, spec, layer_cache, self.deterministic
        )
        x = x + self.norm("post_attention_layernorm")(y)
        y = GemmaMLP(**self.kw, name="mlp")(self.norm("pre_feedforward_layernorm")(x),
                                            self.deterministic)  # fmt: skip
        return x + self.norm("post_feedforward_layernorm")(y), new_cache


class GemmaForCausalLM(_GemmaCommon):
    """Gemma 2 / Gemma 3 text LM; the call is :class:`lora_jax.models.llama.LlamaForCausalLM`'s:
    ``(input_ids [B, T], attention_mask, positions, cache, deterministic, seq_lengths,
    return_hidden, segment_ids) -> (logits [B, T, V] fp32 or hidden [B, T, d], new cache)``.
    ``return_hidden`` gives the final-normed states before the head and before the final
    soft-cap (a chunked loss must apply :func:`softcap` with ``cfg.final_logit_softcapping``)."""

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
        if return_hidden and cfg.final_logit_softcapping is not None:
            raise ConfigError(
                f"{cfg.model_type} soft-caps its logits (final_logit_softcapping="
                f"{cfg.final_logit_softcapping}), which a loss over the hidden states would skip; "
                "compute the loss from the logits (trainer.loss_chunk=null)"
            )
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
        # √d rounded to the embedding's dtype, as transformers' Gemma*TextScaledWordEmbedding
        normalizer = jnp.asarray(math.sqrt(cfg.hidden_size), self.param_dtype).astype(self.dtype)
        x = embed(input_ids) * normalizer
        x, new_layers = run_layers(
            GemmaBlock, {**self.kw, "deterministic": deterministic}, "layers", cfg.num_layers,
            x, positions, spec, cache, self.scan_layers, self.remat,
            layer_kw=lambda i: {"sliding": is_sliding(cfg, i)},
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
        logits = softcap(logits, cfg.final_logit_softcapping)
        return att.finish_call(logits, cache, new_layers, spec, perm)

    def head_kernel(self, params: dict) -> jax.Array:
        """The LM head as a ``[d, V]`` matrix (tied: the token embedding transposed)."""
        if self.cfg.tie_word_embeddings:
            return params["embed_tokens"]["embedding"].T
        return params["lm_head"]["kernel"]
