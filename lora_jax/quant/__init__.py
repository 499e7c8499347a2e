"""Quantized frozen bases for QLoRA: NF4 with double quantization (bitsandbytes' definition),
row-wise int8, and GGUF blocks kept as stored; dequantized on the fly inside ``LoraDense``."""

from lora_jax.quant.kernel import (
    KINDS,
    QUANT_MODES,
    QuantizedKernel,
    dense_kernel,
    from_gguf_blocks,
    frozen_bytes,
    is_quantized,
    quantize_kernel,
    quantize_params,
)

__all__ = [
    "KINDS",
    "QUANT_MODES",
    "QuantizedKernel",
    "dense_kernel",
    "frozen_bytes",
    "from_gguf_blocks",
    "is_quantized",
    "quantize_kernel",
    "quantize_params",
]
