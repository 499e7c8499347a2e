"""Adapters out of (and into) lora-jax: PEFT adapter folders and merged transformers folders."""

from lora_jax.export.merged_hf import save_merged_hf
from lora_jax.export.peft import load_peft, save_peft, to_peft

__all__ = ["load_peft", "save_merged_hf", "save_peft", "to_peft"]
