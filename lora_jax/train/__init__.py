"""Training: the one engine that trains and evaluates K >= 1 adapters over one frozen base
(engine.py), the jitted steps (step.py: one adapter; packed_step.py: K stacked adapters,
stack.py / pack_state.py), the optimizer, checkpoints, sharding, validation loss and the run
record's schema (record.py). ``python -m lora_jax.train`` is the Hydra app (lora_jax.run.app)."""
