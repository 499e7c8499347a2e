"""Length-sorted windows in TrainBatches: less padding, same examples, still a pure function of
the step (resumable)."""

from __future__ import annotations

import numpy as np
import pytest

from lora_jax.tasks.batching import TrainBatches, linear_buckets


def _encoded(n: int = 203, seed: int = 0) -> list[dict]:
    lengths = np.random.default_rng(seed).integers(20, 128, n)
    return [{"input_ids": [i % 50 + 1] * k, "loss_mask": [1] * k} for i, k in enumerate(lengths)]


def _epoch(b: TrainBatches, epoch: int = 0) -> list[dict]:
    return [b.batch_at(epoch * b.steps_per_epoch + s) for s in range(b.steps_per_epoch)]


def test_sorted_windows_pad_less_and_keep_every_example():
    enc = _encoded()
    buckets = linear_buckets(128, 16)
    plain = TrainBatches(enc, 8, seed=3, buckets=buckets)
    sorted_ = TrainBatches(enc, 8, seed=3, buckets=buckets, sort_window=8)
    for e in (0, 1):
        assert sorted(sorted_.order(e).tolist()) == list(range(len(enc)))  # a permutation
        real = [sum(int(x["attention_mask"].sum()) for x in _epoch(b, e)) for b in (plain, sorted_)]
        assert real[0] == real[1] == sum(len(x["input_ids"]) for x in enc)
        positions = [sum(x["attention_mask"].size for x in _epoch(b, e)) for b in (plain, sorted_)]
        assert positions[1] < 0.85 * positions[0], positions
    # the last, partial batch stays last; epochs differ; a fresh object (resume) agrees
    assert len(sorted_.indices_at(sorted_.steps_per_epoch - 1)) == len(enc) % 8
    assert not np.array_equal(sorted_.order(0), sorted_.order(1))
    again = TrainBatches(enc, 8, seed=3, buckets=buckets, sort_window=8)
    for step in (0, 5, sorted_.steps_per_epoch + 2):
        np.testing.assert_array_equal(again.batch_at(step)["input_ids"],
                                      sorted_.batch_at(step)["input_ids"])  # fmt: skip


def test_bad_arguments_name_the_fix():
    with pytest.raises(ValueError, match="sort_window must be >= 0"):
        TrainBatches(_encoded(10), 4, 0, sort_window=-1)
    with pytest.raises(ValueError, match="must be positive"):
        linear_buckets(128, 0)
    assert linear_buckets(100, 32) == [32, 64, 96, 100]
