"""Model family dispatch: build a module from a :class:`ModelConfig`, make an empty KV cache,
and name the LoRA-targetable modules of each family. Loading a checkpoint into a model is
:mod:`lora_jax.models.pretrained` (it uses this module and :mod:`lora_jax.models.convert`;
neither imports it back)."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from lora_jax.errors import ConfigError
from lora_jax.models import attention, gemma, gpt2, llama
from lora_jax.models.config import FAMILY, ModelConfig

MODELS: dict[str, type[nn.Module]] = {
    "gpt2": gpt2.GPT2LMHeadModel,
    "llama": llama.LlamaForCausalLM,
    "gemma": gemma.GemmaForCausalLM,
    "phi3": llama.LlamaForCausalLM,  # Llama with fused weights, kept apart (llama.PHI3_FUSED)
}
LORA_MODULES: dict[str, dict[str, tuple[str, ...]]] = {
    "gpt2": gpt2.LORA_MODULES,
    "llama": llama.LORA_MODULES,
    "gemma": gemma.LORA_MODULES,
    "phi3": llama.LORA_MODULES,
}
# HF's fused modules per family -> the modules we keep apart (row order of the fused weight)
FUSED: dict[str, dict[str, tuple[str, ...]]] = {"phi3": llama.PHI3_FUSED}


class ModuleMap(dict):
    """``{module suffix: blocks}`` plus ``fused``: the family's HF-fused modules (Phi-3's
    ``self_attn.qkv_proj`` -> q/k/v_proj), which targeting accepts as names."""

    fused: dict[str, tuple[str, ...]]

    def __init__(self, modules: dict, fused: dict | None = None):
        super().__init__(modules)
        self.fused = dict(fused or {})


def as_dtype(dtype: Any) -> Any:
    """``"bfloat16"`` / ``"float32"`` / a numpy or jnp dtype -> a jnp dtype."""
    if isinstance(dtype, str):
        names = {"float32": jnp.float32, "fp32": jnp.float32, "bfloat16": jnp.bfloat16,
                 "bf16": jnp.bfloat16, "float16": jnp.float16, "fp16": jnp.float16}  # fmt: skip
        if dtype not in names:
            raise ConfigError(f"unknown dtype {dtype!r}; use one of {sorted(names)}")
        return names[dtype]
    return jnp.dtype(dtype).type


def build_model(
    cfg: ModelConfig,
    dtype: Any = jnp.float32,
    param_dtype: Any = jnp.float32,
    lora_dropout: float = 0.0,
) -> nn.Module:
    """The Flax LM for ``cfg.family``; ``apply(vars, ids [B, T], attention_mask, positions, cache,
    deterministic) -> (logits [B, T, V] fp32, new_cache)``."""
    cls = MODELS[cfg.family]
    return cls(
        cfg=cfg, dtype=as_dtype(dtype), param_dtype=as_dtype(param_dtype), lora_dropout=lora_dropout
    )


def init_cache(
    cfg: ModelConfig, batch_size: int, max_len: int, dtype: Any = jnp.float32
) -> attention.Cache:
    """Empty KV cache: per layer k/v ``[B, max_len, kv_heads, head_dim]``, slot mask
    ``[B, max_len]`` and write index (int32 scalar); see :mod:`lora_jax.models.attention`."""
    return attention.init_kv_cache(
        cfg.num_layers, batch_size, max_len, cfg.num_kv_heads, cfg.head_dim, as_dtype(dtype)
    )


def lora_modules(cfg_or_family: ModelConfig | str) -> ModuleMap:
    """Module path after the layer scope (dotted) -> LoRA column blocks, e.g. for GPT-2
    ``{"attn.c_attn": ("q", "k", "v"), ...}`` (a dict; ``.fused``: :data:`FUSED`'s entry).
    Accepts a config, a family or a model_type."""
    if isinstance(cfg_or_family, ModelConfig):
        family = cfg_or_family.family
    else:
        family = FAMILY.get(cfg_or_family, cfg_or_family)
    if family not in LORA_MODULES:
        raise ConfigError(f"unknown model family {cfg_or_family!r}; known: {sorted(LORA_MODULES)}")
    return ModuleMap(LORA_MODULES[family], FUSED.get(family))


def fused_modules(cfg_or_family: ModelConfig | str) -> dict[str, tuple[str, ...]]:
    """HF's fused module suffix -> the suffixes of the modules lora-jax keeps apart (Phi-3)."""
    return lora_modules(cfg_or_family).fused
