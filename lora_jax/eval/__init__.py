"""Evaluation: decoding (greedy / beam over the KV cache, one adapter or K stacked), task
scoring of decoded items, and re-evaluation of saved runs (``python -m lora_jax.evaluate``)."""
