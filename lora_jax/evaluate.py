"""``python -m lora_jax.evaluate``: entry point (the code is in lora_jax.eval)."""

if __name__ == "__main__":
    from lora_jax.run.entry import evaluate

    evaluate()
