"""``python -m lora_jax.analyze``: entry point (the code is in lora_jax.analysis.cli)."""

if __name__ == "__main__":
    from lora_jax.analysis.cli import main

    main()
