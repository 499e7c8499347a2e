"""Train-step benchmark: ``python -m lora_jax.bench [--cases ...] [--tiny] [--peft]``.

cases.py holds the case table (model shapes, batch, LoRA targets); jax_step.py times lora-jax's
jitted step and counts FLOPs/memory; peft_step.py runs the same case in HF PEFT (eager and
torch.compile) in the same process; __main__.py prints one line per case and the ratios.
"""
