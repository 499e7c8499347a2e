"""Quantized frozen bases for QLoRA: NF4 with double quantization (bitsandbytes' definition),
row-wise int8, and GGUF blocks kept as stored; dequantized on the fly inside ``LoraDense``."""

from lora_jax.quant.kernel import (
    KINDS,
    QUANT_MODES,
    QuantizedKernel,
    from_gguf_blocks,
    frozen_bytes,
    frozen_dot,
    is_quantized,
    quantize_kernel,
    quantize_params,
)

__all__ = [
    "KINDS",
    "QUANT_MODES",
    "QuantizedKernel",
    "frozen_bytes",
    "frozen_dot",
    "from_gguf_blocks",
    "is_quantized",
    "quantize_kernel",
    "quantize_params",
]
