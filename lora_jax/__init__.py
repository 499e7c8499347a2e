"""lora-jax: LoRA rank and target-module ablations in JAX/Flax.

The core idea: LoRA parameters are their own pytree (the Flax ``"lora"`` collection), kept
apart from the frozen base params (the ``"params"`` collection). A training step
differentiates the LoRA tree only; merging W + s·A·B is for inference and export.

Importing the library changes no process-wide state; the command-line entry points set the
host malloc policy (lora_jax.run.entry, lora_jax.run.malloc).
"""

__version__ = "0.1.0"
