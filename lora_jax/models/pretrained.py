"""Load a pretrained model: a local HF folder, a ``.gguf`` file or a hub id -> the Flax module,
its params, its :class:`ModelConfig` and its tokenizer.

Layering: :mod:`lora_jax.models.load` reads checkpoint files (HF names, numpy),
:mod:`lora_jax.models.convert` maps them onto our params tree, :mod:`lora_jax.models.registry`
builds the module; this module composes the three and nothing below imports it.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn

from lora_jax.errors import ConfigError
from lora_jax.models import convert
from lora_jax.models.config import ModelConfig
from lora_jax.models.load import load_checkpoint
from lora_jax.models.registry import as_dtype, build_model, lora_modules
from lora_jax.quant import QUANT_MODES, quantize_params


@dataclasses.dataclass
class LoadedModel:
    module: nn.Module
    params: dict
    config: ModelConfig
    tokenizer: Any


def load_model(
    source: str,
    dtype: str = "float32",
    param_dtype: str = "float32",
    lora_dropout: float = 0.0,
    quant: str = "none",
) -> LoadedModel:
    """Load a local HF folder, a ``.gguf`` file or a hub id into (module, params, config,
    tokenizer). Parameters are stored in ``param_dtype``; compute runs in ``dtype``.

    ``quant`` stores the LoRA-targetable Dense kernels of the frozen base quantized (QLoRA,
    dequantized on the fly inside the step; see :mod:`lora_jax.quant`): ``nf4`` (4-bit
    NormalFloat, blocks of 64, double-quantized scales), ``int8`` (row-wise absmax), ``keep``
    (a GGUF file's own Q8_0/Q4_0/Q4_1/Q5_0/Q4_K/Q6_K blocks) or ``none``. Embeddings, norms, biases
    and the LM head stay in ``param_dtype``.
    """
    if quant not in QUANT_MODES:
        raise ConfigError(f"unknown model.quant {quant!r}; use one of {list(QUANT_MODES)}")
    hf_config, state_dict, tokenizer = load_checkpoint(source, keep_quantized=quant == "keep")
    cfg = ModelConfig.from_hf(hf_config, origin=f"{source} (config)")
    params = convert.params_from_hf(state_dict, cfg, as_dtype(param_dtype))
    del state_dict
    if quant in ("nf4", "int8"):
        params = quantize_params(params, quant, lora_modules(cfg))
    module = build_model(cfg, dtype, param_dtype, lora_dropout)
    return LoadedModel(module=module, params=params, config=cfg, tokenizer=tokenizer)


def load_for_run(cfg: Any) -> LoadedModel:
    """The frozen model as a run of ``cfg`` loads it: the precision policy's dtypes (and matmul
    precision, lora_jax.models.precision) and ``model.quant``."""
    from lora_jax.models import precision as precision_policy

    prec = precision_policy.resolve(cfg.precision, cfg.model.dtype, cfg.model.param_dtype)
    prec.apply()
    return load_model(cfg.model.source, prec.compute, prec.base, cfg.lora.dropout,
                      quant=cfg.model.get("quant", "none"))  # fmt: skip
