"""A job's state in the engine (:class:`Job`) and the plain functions the engine applies to
runs: the layer layout, resume bookkeeping, memory figures."""

from __future__ import annotations

import resource
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jax
from omegaconf import DictConfig

from lora_jax.train import data


@dataclass
class Job:
    """One run of the engine. The caller (lora_jax.run.jobs) gives ``cfg``, ``run_dir``,
    ``results`` (the record), ``ckpt`` (its Checkpointer) and ``tracker`` (``log(row, step)``,
    ``update_axes(axes)``, or None); the engine fills the rest."""

    cfg: DictConfig
    run_dir: Path
    results: dict
    ckpt: Any
    tracker: Any = None
    alive: bool = True
    exc: BaseException | None = None  # why it failed
    tree: Any = None  # the LoRA tree at step 0
    tx: Any = None  # its optax transform (the solo one: checkpoints are in its structure)
    lr_fn: Any = None
    on_fail: Any = None  # called with the job when it fails (the caller writes its record)
    metrics: dict = field(init=False)

    def __post_init__(self) -> None:
        self.metrics = self.results["metrics"]

    def log(self, row: dict, step: int) -> None:
        if self.tracker is not None:
            self.tracker.log(row, step=step)

    def save(self, step: int, lora: Any, opt_state: Any) -> None:
        """The job's checkpoint of ``step`` and its training record so far (a resume that
        ran no step already has it)."""
        if self.ckpt is None or self.ckpt.latest_step() == step:
            return
        m = self.metrics
        extra = {
            "train": m["train"],
            "validation": m["validation"],
            "eval_before": m["eval_before"],
        }
        self.ckpt.save(step, lora, opt_state, extra=extra)


def layer_layout(cfg: DictConfig, lm: Any) -> tuple[Any, str | None]:
    """The training module (``trainer.remat`` / ``trainer.scan``; with ``data.pack=step`` the
    rows of a whole step attend in blocks of ``task.max_len``) and the scan prefix (or None);
    with ``trainer.scan`` ``lm.params`` becomes the stacked tree, held once (see
    :meth:`Engine.layer_layout`)."""
    from lora_jax.models.layers import LAYER_PREFIX, LayerViews, stack_layers

    tcfg = cfg.trainer
    module = lm.module.clone(remat=tcfg.remat, scan_layers=tcfg.scan)
    if data.packing(cfg) and data.step_multiple(cfg) is not None:
        module = module.clone(cfg=module.cfg.replace(packed_block=int(cfg.task.max_len)))
    if not tcfg.scan:
        return module, None
    prefix = LAYER_PREFIX[lm.config.family]
    lm.params = stack_layers(lm.params, prefix, consume=True)
    lm.module = LayerViews(lm.module, prefix)
    return module, prefix


def common_step(ckpts: list[Any]) -> int:
    """The newest step every job's own checkpoint holds (0: one has none, start afresh); the
    steps after it are dropped (the pack writes them again)."""
    held = [set(c.all_steps()) for c in ckpts]
    start = max(set.intersection(*held) if held else set(), default=0)
    for c in ckpts:
        for s in c.all_steps():
            if s > start:
                c.manager.delete(s)
    return start


def restore_record(results: dict, meta: dict, step: int) -> None:
    """The training record of a resumed run's earlier part, as its checkpoint stored it."""
    for key, history in (("train", "losses"), ("validation", "history")):
        part = dict(meta.get(key) or {})
        if part:
            part[history] = [row for row in part.get(history, []) if row[0] <= step]
            results["metrics"][key].update(part)
    if meta.get("eval_before"):
        results["metrics"]["eval_before"] = meta["eval_before"]
    results["run"]["resumed_at"] = step


def memory() -> dict:
    stats = jax.local_devices()[0].memory_stats() or {}
    return {
        "peak_bytes": stats.get("peak_bytes_in_use"),
        "host_peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    }
