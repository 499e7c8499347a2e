"""lora-jax: LoRA rank and target-module ablations in JAX/Flax.

The core idea: LoRA parameters are their own pytree (the Flax ``"lora"`` collection), kept
apart from the frozen base params (the ``"params"`` collection). A training step
differentiates the LoRA tree only; merging W + s·A·B is for inference and export.
"""

__version__ = "0.1.0"

# Host memory for XLA:CPU's per-step temp buffers (lora_jax/_malloc.py): before anything else
# starts threads. LORA_JAX_HOST_MALLOC=system opts out.
from lora_jax import _malloc

_malloc.apply_from_env()
