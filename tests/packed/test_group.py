"""The grouping rule of hydra/launcher=packed (lora_jax.run.packs) on composed configs."""

from __future__ import annotations

from pathlib import Path

import pytest

from lora_jax.run.packs import make_packs
from tests.train.app import compose, tiny_overrides


def _cfgs(*jobs: list[str]):
    return [compose(tiny_overrides(Path("/nonexistent"), *job)) for job in jobs]


def test_what_may_differ_shares_a_pack_and_what_may_not_splits():
    cfgs = _cfgs(
        ["lora=qv", "lora.r=1", "seed=0"],
        [
            "lora=all",
            "lora.r=8",
            "lora.alpha=32",
            "optim.lr=1e-3",
            "optim.warmup_steps=5",
            "seed=0",
        ],
        ["lora=attn", "lora.r=4", "seed=1"],  # another seed: another data order
        ["lora=qv", "lora.r=64", "seed=0"],  # another rank band
        ["lora=qv", "lora.r=2", "seed=0", "trainer.batch_size=4"],  # another batch shape
        ["lora=qv", "lora.r=2", "seed=0", "lora.dropout=0.1"],  # dropout is part of the model
    )
    assert make_packs(cfgs, pack_size=8, rank_bands=[16]) == [[0, 1], [2], [3], [4], [5]]
    assert make_packs(cfgs, pack_size=8, rank_bands=[]) == [[0, 1, 3], [2], [4], [5]]
    assert make_packs(cfgs, pack_size=1, rank_bands=[]) == [[i] for i in range(6)]


def test_a_common_data_seed_packs_seeds_together():
    cfgs = _cfgs(*[["lora=qv", f"seed={s}", "trainer.data_seed=0"] for s in (0, 1, 2)])
    assert make_packs(cfgs, pack_size=2) == [[0, 1], [2]]
    with pytest.raises(ValueError, match="pack_size"):
        make_packs(cfgs, pack_size=0)
