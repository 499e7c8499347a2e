"""Hydra launcher plugin ``hydra/launcher=packed`` (lora_jax.packed): trains a multirun's jobs
in packs that share one compiled step."""
