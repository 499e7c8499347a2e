"""Packed sweeps: K LoRA jobs on one frozen base trained and evaluated in one compiled program.

stack.py (pad/stack/unstack + masks), step.py (the vmapped step), decode.py (multi-adapter
decoding), runner.py (one pack: load once, one data pipeline, per-job records), group.py (which
jobs share a pack); the Hydra launcher lives in hydra_plugins/lora_jax_packed/."""
