"""Validation loss on held-out data, at eval points during training and at the end.

Held-out data: the task's eval split (for E2E the test set, whose MRs the model never trains
on), every (source, reference) pair tokenized exactly like the training data, the first
``trainer.val_examples`` pairs in file order. The loss is the token-weighted mean next-token NLL
over reference tokens (no label smoothing): sum of per-token NLL / number of target tokens,
over the whole set (not a mean of per-batch means).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from lora_jax.tasks.batching import TrainBatches, pack_examples


def validation_batches(
    encoded: Sequence[dict[str, Sequence[int]]],
    batch_size: int,
    buckets: Sequence[int],
    pad_id: int,
) -> list[dict[str, Any]]:
    """Each held-out example exactly once, in fixed-shape padded batches (padding rows carry
    loss_mask 0): input_ids [B, T], attention_mask [B, T], loss_mask [B, T]."""
    batches = TrainBatches(encoded, batch_size, seed=0, buckets=buckets, pad_id=pad_id)
    return [batches.batch_at(i) for i in range(batches.steps_per_epoch)]


def packed_batches(
    encoded: Sequence[dict[str, Sequence[int]]],
    batch_size: int,
    row_len: int,
    pad_id: int,
    row_multiple: int = 1,
) -> list[dict[str, Any]]:
    """Each held-out example exactly once, ``batch_size`` examples at a time packed into rows
    (lora_jax.tasks.batching.pack_examples); the loss sums are the padded batches' sums."""
    return [pack_examples(encoded[i : i + batch_size], row_len, row_multiple=row_multiple,
                          pad_id=pad_id) for i in range(0, len(encoded), batch_size)]  # fmt: skip


def validation_loss(
    eval_loss: Callable, lora: Any, frozen: Any, batches: Sequence[dict[str, Any]]
) -> float:
    """Token-weighted mean NLL over ``batches``; ``eval_loss(lora, frozen, batch) -> (nll sum,
    tokens)`` is lora_jax.train.step.make_eval_loss. One host sync, at the end."""
    total, tokens = jnp.zeros(()), jnp.zeros(())
    for batch in batches:
        s, n = eval_loss(lora, frozen, batch)
        total, tokens = total + s, tokens + n
    total, tokens = jax.device_get((total, tokens))
    return float(total / max(float(tokens), 1.0))
