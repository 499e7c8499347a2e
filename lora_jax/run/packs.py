"""Which jobs of a multirun may share a pack.

Rule: two jobs share a pack when their resolved configs are equal once the per-job keys are
removed (below: seed, run name/dir, logger, the LoRA shape keys and the optimizer's
hyperparameters), with ``trainer.data_seed`` replaced by the effective data seed (``data_seed``
or, when null, ``seed``). So model, task, batch shape, step count, data order, LoRA dropout,
gradient accumulation and every trainer setting are shared; jobs that differ only in ``seed``
share a pack only under a common ``trainer.data_seed``. Within such a group, jobs are split by
rank band (the job's largest rank r ≤ each bound of ``rank_bands``; padding r = 1 to r = 64
would waste the small jobs' compute), then cut into packs of at most ``pack_size`` jobs in
sweep order.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from omegaconf import DictConfig, OmegaConf

from lora_jax.errors import ConfigError

PER_JOB_TOP = ("seed", "name", "output_dir", "logger")
PER_JOB_LORA = ("r", "alpha", "targets", "exclude_modules", "layers", "scaling", "init", "rank_pattern",
                "alpha_pattern")  # fmt: skip
PER_JOB_OPTIM = ("lr", "b1", "b2", "eps", "weight_decay", "schedule", "warmup_steps", "grad_clip",
                 "label_smoothing", "loraplus_lr_ratio")  # fmt: skip


def pack_key(cfg: DictConfig) -> str:
    """The shared part of a job's config, as a canonical JSON string."""
    c: dict[str, Any] = OmegaConf.to_container(cfg, resolve=True)  # type: ignore[assignment]
    c.pop("hydra", None)
    ds = c["trainer"].get("data_seed")
    c["trainer"]["data_seed"] = c["seed"] if ds is None else ds
    for k in PER_JOB_TOP:
        c.pop(k, None)
    for k in PER_JOB_LORA:
        c["lora"].pop(k, None)
    for k in PER_JOB_OPTIM:
        c["optim"].pop(k, None)
    return json.dumps(c, sort_keys=True, default=str)


def max_rank(cfg: DictConfig) -> int:
    return max([int(cfg.lora.r), *(int(v) for v in (cfg.lora.rank_pattern or {}).values())])


def rank_band(r: int, bounds: Sequence[int]) -> int:
    """Index of the first bound >= r (len(bounds) above the last)."""
    return next((i for i, b in enumerate(sorted(bounds)) if r <= b), len(bounds))


def make_packs(
    cfgs: Sequence[DictConfig], pack_size: int, rank_bands: Sequence[int] = ()
) -> list[list[int]]:
    """Job indices grouped into packs (each list in sweep order; packs in order of first job)."""
    if pack_size < 1:
        raise ConfigError(f"hydra.launcher.pack_size must be >= 1; got {pack_size}")
    groups: dict[tuple[str, int], list[int]] = {}
    for i, cfg in enumerate(cfgs):
        groups.setdefault((pack_key(cfg), rank_band(max_rank(cfg), rank_bands)), []).append(i)
    packs = [g[lo : lo + pack_size] for g in groups.values() for lo in range(0, len(g), pack_size)]
    return sorted(packs, key=lambda p: p[0])
