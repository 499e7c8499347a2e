"""``--select-by``: pick each cell's learning rate on validation, report test metrics at it.

A sweep that crosses every cell with an lr grid (sweeps/hydra/lr_grid.yaml) holds, per cell,
runs at several learning rates and seeds. Comparing cells at one shared lr favours the cell
that lr was tuned for; here each cell gets its own:

- Cells: runs whose recipes (lora_jax.train.record.recipe: the resolved config without seed,
  names, paths and logging) agree on everything but ``optim.lr``. Records without a config
  (old or W&B runs) fall back to their sweep key without ``lr`` and ``seed``.
- Per cell and lr: the mean over seeds of the validation score. ``val_loss`` reads
  ``metrics.validation.loss`` (lower is better); ``val_<metric>`` reads
  ``metrics.validation.<metric>`` (higher is better, unless the name says loss/perplexity, as
  in lora_jax.report.stats.lower_is_better). An lr whose mean is not finite (a diverged
  seed) is never picked.
- ``--select-seeds 0``: the means use seed 0's runs only, for a study that chose each cell's lr
  on one seed and ran the other seeds at the chosen lr alone (the grid is then the lrs that
  seed ran); the table still averages every seed at the pick.
- The cell's lr is the best mean (on a tie, the smaller lr). Its runs at that lr go on to the
  table; the runs at the other lrs stay out of it (they remain in runs.csv). A pick at the
  smallest or largest lr of the cell's grid is warned about: the optimum may lie outside it.
- A successful run without the validation score cannot be placed: it is listed as failed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from lora_jax.report.collect import ReportError, Run
from lora_jax.report.stats import lower_is_better

LR_KEY = "optim.lr"
# Sweep-key entries that are not part of a cell: the lr itself, the seed, measurements.
NOT_CELL_AXES = ("lr", "seed", "steps", "tokens_seen")


def validation_key(select_by: str) -> str:
    """ "val_loss" -> "validation.loss", "val_bleu" -> "validation.bleu" (keys of Run.metrics)."""
    name = select_by.removeprefix("val_")
    if not select_by.startswith("val_") or not name:
        raise ReportError(
            f"--select-by {select_by!r}: give val_loss or val_<metric> (a validation metric "
            "stored under metrics.validation in results.json)"
        )
    return f"validation.{name}"


def run_lr(run: Run) -> float | None:
    """The run's learning rate: its resolved config's optim.lr, else its sweep key's lr."""
    value = run.recipe.get(LR_KEY, run.sweep.get("lr"))
    return None if value is None else float(value)


@dataclass
class LrChoice:
    """One cell's pick. scores: lr -> (mean validation score over seeds, seeds); grid: the
    cell's lrs, ascending; runs: the cell's runs at the picked lr."""

    axes: dict[str, Any]
    lr: float
    grid: list[float]
    scores: dict[float, tuple[float, int]]
    runs: list[Run]

    @property
    def edge(self) -> str | None:
        """ "smallest"/"largest" when the pick is at that end of a grid of 2+ lrs, "only" for a
        one-lr cell (nothing was selected), else None."""
        if len(self.grid) == 1:
            return "only"
        if self.lr == self.grid[0]:
            return "smallest"
        if self.lr == self.grid[-1]:
            return "largest"
        return None


@dataclass
class Selection:
    select_by: str
    key: str  # the metric key read, e.g. "validation.loss"
    lower_is_better: bool
    choices: list[LrChoice]
    excluded: list[Run] = field(default_factory=list)  # as failed runs, with the reason

    def choice_of(self, run: Run) -> LrChoice | None:
        return next((c for c in self.choices if any(r is run for r in c.runs)), None)

    @property
    def warnings(self) -> list[str]:
        out = []
        for c in self.choices:
            where = describe(c.axes)
            if c.edge == "only":
                out.append(f"{where}: one lr only ({c.lr:.1e}); nothing to select from")
            elif c.edge:
                out.append(
                    f"{where}: the picked lr {c.lr:.1e} is the {c.edge} of the grid "
                    f"[{', '.join(f'{x:.1e}' for x in c.grid)}]; the best lr may lie outside it: "
                    "widen the grid on that side"
                )
        return out


def describe(axes: dict[str, Any]) -> str:
    """ "targets=q,v r=8 ...": the cell's axes; an axis the cell does not have (None: a LoRA
    cell's method, full fine-tuning's r) is left out."""
    return " ".join(f"{k}={v}" for k, v in axes.items() if v is not None) or "the only cell"


def _cell_key(run: Run) -> tuple:
    if run.recipe:
        items = {k: v for k, v in run.recipe.items() if k != LR_KEY}
    else:
        items = {k: v for k, v in run.sweep.items() if k not in NOT_CELL_AXES}
    return tuple(sorted((k, repr(v)) for k, v in items.items()))


def select_lr(runs: Sequence[Run], select_by: str, seeds: Sequence[int] | None = None) -> Selection:
    """Pick each cell's lr among the successful ``runs`` (see the module docstring). ``seeds``:
    score each lr on these seeds' runs only (a study that chose the lr on seed 0 and ran the
    other seeds at the chosen lr alone); the cell's runs at the pick keep every seed."""
    key = validation_key(select_by)
    lower = lower_is_better(key)
    cells: dict[tuple, list[Run]] = {}
    excluded: list[Run] = []
    for run in runs:
        if not run.ok:
            continue
        if key not in run.metrics:
            known = sorted(k for k in run.metrics if k.startswith("validation."))
            excluded.append(replace(run, ok=False, error=(
                f"no {key} for --select-by {select_by} (validation metrics: "
                f"{', '.join(known) or 'none'}; is trainer.val_examples 0?)")))  # fmt: skip
            continue
        if run_lr(run) is None:
            raise ReportError(
                f"--select-by: run {run.name} records no learning rate (config optim.lr or "
                "sweep lr)"
            )
        cells.setdefault(_cell_key(run), []).append(run)

    sign = 1.0 if lower else -1.0
    picked: list[tuple[tuple, float, list[float], dict, list[Run]]] = []
    for cell_key, members in cells.items():
        by_lr: dict[float, list[Run]] = {}
        for run in members:
            by_lr.setdefault(run_lr(run), []).append(run)
        scoring = {
            lr: [r for r in rs if seeds is None or _seed(r) in seeds]
            for lr, rs in sorted(by_lr.items())
        }
        scores = {
            lr: (sum(r.metrics[key] for r in rs) / len(rs), len(rs))
            for lr, rs in scoring.items()
            if rs
        }
        if not scores:  # none of the cell's runs has a selecting seed
            excluded += [replace(r, ok=False, error=f"no run of seed {list(seeds or [])} in its "
                                 "cell to pick the lr on") for r in members]  # fmt: skip
            continue
        finite = [lr for lr, (mean, _) in scores.items() if math.isfinite(mean)]
        if not finite:
            excluded += [replace(r, ok=False, error=f"{key} is not finite at every lr of its "
                                 "cell: no lr to pick") for r in members]  # fmt: skip
            continue
        best = min(finite, key=lambda lr: (sign * scores[lr][0], lr))
        picked.append((cell_key, best, sorted(scores), scores, by_lr[best]))

    if not picked:
        raise ReportError(
            f"--select-by {select_by}: no successful run has a finite {key} "
            f"({len(excluded)} without it); validation runs when trainer.val_examples > 0"
        )
    varying = _varying_axes([p[4][0] for p in picked])
    choices = [
        LrChoice({a: runs_[0].sweep.get(a) for a in varying}, lr, grid, scores, runs_)
        for _, lr, grid, scores, runs_ in picked
    ]
    return Selection(select_by, key, lower, choices, excluded)


def _seed(run: Run) -> int | None:
    value = run.recipe.get("seed", run.sweep.get("seed"))
    return None if value is None else int(value)


def _varying_axes(runs: Sequence[Run]) -> list[str]:
    """Sweep-key axes (minus lr, seed, measurements) that differ between the cells' runs."""
    axes = [a for a in dict.fromkeys(a for r in runs for a in r.sweep) if a not in NOT_CELL_AXES]
    return [a for a in axes if len({repr(r.sweep.get(a)) for r in runs}) > 1]
