"""``python -m lora_jax.bench``: entry point (lora_jax.bench.cli; the host malloc policy first)."""

from lora_jax.run.entry import bench

bench()
