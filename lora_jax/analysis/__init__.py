"""Adapter subspace analysis: ΔW subspaces and amplification (subspace.py), and its command
line (cli.py, ``python -m lora_jax.analyze``)."""
