"""The console every stage prints its lines to (rich; tracking to W&B is lora_jax.run.tracking)."""

from rich.console import Console

console = Console(highlight=False)
