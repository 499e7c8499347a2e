"""TrainBatches: deterministic per seed, resumable by step, fixed shapes, masked padding."""

import numpy as np
import pytest

from lora_jax.tasks.batching import TrainBatches, default_buckets


def _encoded(n=10, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        t = int(rng.integers(3, 70))
        out.append({"input_ids": [i + 1] * t, "loss_mask": [0] * (t // 2) + [1] * (t - t // 2)})
    return out


def test_default_buckets():
    assert default_buckets(512) == [32, 64, 128, 256, 512]
    assert default_buckets(100) == [32, 64, 100]


def test_epochs_cover_all_examples_and_pad_last_batch():
    enc = _encoded(10)
    tb = TrainBatches(enc, batch_size=4, seed=3, pad_id=0)
    assert tb.steps_per_epoch == 3
    seen = []
    for step in range(3):
        b = tb.batch_at(step)
        assert b["input_ids"].shape[0] == 4 and b["input_ids"].shape[1] in tb.buckets
        assert b["input_ids"].dtype == np.int32 and b["loss_mask"].dtype == np.float32
        rows = b["attention_mask"].sum(1) > 0
        seen += [int(r[0]) - 1 for r in b["input_ids"][rows]]
        if step == 2:  # 10 = 4 + 4 + 2: two fully masked rows
            assert rows.tolist() == [True, True, False, False]
            assert b["loss_mask"][2:].sum() == 0 and (b["input_ids"][2:] == 0).all()
    assert sorted(seen) == list(range(10))
    # the row content is the example, right-padded, with its loss mask
    b, idx = tb.batch_at(0), tb.indices_at(0)
    n = len(enc[idx[0]]["input_ids"])
    assert b["loss_mask"][0, :n].tolist() == enc[idx[0]]["loss_mask"]
    assert b["attention_mask"][0].tolist() == [1] * n + [0] * (b["input_ids"].shape[1] - n)


def test_deterministic_per_seed_and_resumable():
    enc = _encoded(23)
    a = TrainBatches(enc, 4, seed=1)
    run = [a.batch_at(s) for s in range(20)]  # crosses epochs (6 steps per epoch)
    resumed = TrainBatches(enc, 4, seed=1)
    for s in range(13, 20):
        for k in run[s]:
            np.testing.assert_array_equal(resumed.batch_at(s)[k], run[s][k])
    other = TrainBatches(enc, 4, seed=2)
    assert not np.array_equal(other.indices_at(0), a.indices_at(0))
    assert not np.array_equal(a.order(0), a.order(1))  # reshuffled per epoch


def test_errors():
    with pytest.raises(ValueError, match="largest bucket"):
        TrainBatches(_encoded(5), 2, 0, buckets=[8])
    with pytest.raises(ValueError, match="no training examples"):
        TrainBatches([], 2, 0)
