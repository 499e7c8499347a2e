"""``python -m lora_jax.train [overrides]``: the Hydra app (lora_jax.run.app), after the host
malloc policy (lora_jax.run.entry)."""

from lora_jax.run.entry import train

train()
