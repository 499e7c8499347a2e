"""Aggregate runs into cells with pandas: one cell per (rows, cols) value of the runs' sweep key,
one table (Section) per value of the split axes (alpha, scale, scaling, variant, model, task by default,
plus ``--split``) that vary inside a cell.

A cell averages seeds only: its runs' recipes (lora_jax.train.record.recipe: the resolved config
without seed, names, paths and logging) must be equal. A cell whose runs differ in anything
else (say one run at another lr) is refused with the difference listed, or with
``allow_mixed=True`` averaged and listed in ``Report.mixed``.

Per cell and metric: mean and sample std (ddof=1) over seeds, and for the main metric the 95%
Student-t interval of the mean over seeds, mean ± t_{0.975, n−1}·s/√n (lora_jax.report.stats;
none for n=1). Failed runs are excluded from the means and listed with their error.

``select_by`` ("val_loss", "val_<metric>"): for sweeps that cross each cell with an lr grid,
each cell's lr is first picked on validation (lora_jax.report.select) and the cell holds its
runs at that lr only. The report also names the LoRA init of its runs (config ``lora.init``).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import pandas as pd

from lora_jax.report.collect import ReportError, Run
from lora_jax.report.select import LrChoice, Selection, select_lr
from lora_jax.report.stats import mean_std, t_interval

PERCENT_PREFIXES = ("bleu", "rouge", "meteor", "acc", "exact_match")
SPLIT_AXES = ("alpha", "scale", "scaling", "variant", "model", "task")
# Legacy target names, placed as the paper's tables place them (qk before qv, Table 5).
LEGACY_ORDER = ("q", "k", "v", "o", "qk", "qv", "attn", "mlp", "all")
MODULE_ORDER = ("q", "k", "v", "o", "gate", "up", "down")


def metric_key(metric: str) -> str:
    """ "bleu" -> "eval.bleu"; dotted names ("train.final_loss") are paths under metrics."""
    return metric if "." in metric else f"eval.{metric}"


def is_percent(name: str, values: Iterable[float]) -> bool:
    """The display rule: bleu/rouge/meteor/acc*/exact_match stored as fractions -> ×100."""
    leaf = name.rsplit(".", 1)[-1].lower()
    values = [v for v in values if math.isfinite(v)]
    return leaf.startswith(PERCENT_PREFIXES) and bool(values) and all(0 <= v <= 1 for v in values)


@dataclass
class Cell:
    """Runs sharing one (row, col) value; stats in display units."""

    row: Any
    col: Any
    runs: list[Run]
    mean: float
    std: float | None  # None when n == 1
    ci: tuple[float, float] | None  # 95% Student-t interval of the mean over seeds (n >= 2)
    trainable: int | None
    stats: dict[str, tuple[float, float | None]]  # every metric: (mean, std)
    lr: LrChoice | None = None  # the cell's lr pick (select_by), None without one

    @property
    def n(self) -> int:
        return len(self.runs)

    @property
    def half(self) -> float | None:
        """Half-width of the 95% interval: t_{0.975, n−1}·s/√n (None for n = 1)."""
        return None if self.ci is None else (self.ci[1] - self.ci[0]) / 2


@dataclass
class Section:
    """One table: cells over rows x cols at one value of the axes that split the sweep."""

    fixed: dict[str, Any]
    rows: list[Any]
    cols: list[Any]
    cells: dict[tuple[Any, Any], Cell]


@dataclass
class Report:
    metric: str
    rows_axis: str
    cols_axis: str
    sections: list[Section]
    failed: list[Run]
    runs: list[Run]
    scales: dict[str, float]  # metric key -> display multiplier (100 or 1)
    mixed: list[str]  # cells averaged over runs that differ beyond the seed (allow_mixed)
    init: str = "unknown"  # the cells' runs' lora.init: one name, "mixed", or "unknown"
    selection: Selection | None = None  # the per-cell lr picks (select_by)
    baseline: Cell | None = None  # the full fine-tuning runs (method=full), outside the grid


def sort_key(axis: str, value: Any) -> tuple:
    """Targets: labels by (MLP involved, number of modules, module order); legacy names in
    paper order; then numbers by value, then strings."""
    if axis == "targets" and isinstance(value, str):
        names = value.split(",")
        if all(n in MODULE_ORDER for n in names):
            idx = tuple(MODULE_ORDER.index(n) for n in names)
            return (0, (any(i >= 4 for i in idx), len(idx), idx), "")
        if value in LEGACY_ORDER:
            return (1, (LEGACY_ORDER.index(value),), "")
    if isinstance(value, (int, float)):
        return (2, (value,), "")
    return (3, (), str(value))


def cell_differences(runs: Sequence[Run]) -> dict[str, dict[Any, list[str]]]:
    """{config key: {value: [run names]}} for every recipe key on which ``runs`` disagree."""
    known = [r for r in runs if r.recipe]
    keys = sorted({k for r in known for k in r.recipe})
    out: dict[str, dict[Any, list[str]]] = {}
    for k in keys:
        by_value: dict[Any, list[str]] = {}
        for r in known:
            by_value.setdefault(repr(r.recipe.get(k, "<absent>")), []).append(r.name)
        if len(by_value) > 1:
            out[k] = by_value
    return out


def describe_differences(where: str, diffs: dict[str, dict[Any, list[str]]]) -> str:
    parts = [
        f"{k}: " + "; ".join(f"{v} ({', '.join(names)})" for v, names in by.items())
        for k, by in diffs.items()
    ]
    return f"{where}: runs differ in " + " | ".join(parts)


def init_of(runs: Iterable[Run]) -> str:
    """The LoRA init the runs' resolved configs used: its name when they agree, "mixed" when
    they differ, "unknown" when no run records it (no config in the record)."""
    names = {r.recipe.get("lora.init") for r in runs}
    if len(names) > 1:
        return "mixed"
    return next(iter(names), None) or "unknown"


def aggregate(
    runs: list[Run],
    metric: str,
    rows: str = "targets",
    cols: str = "r",
    split: Sequence[str] = (),
    allow_mixed: bool = False,
    select_by: str | None = None,
    select_seeds: Sequence[int] | None = None,
) -> Report:
    """Group successful runs into cells over (rows, cols); see the module docstring."""
    key = metric_key(metric)
    failed = [r for r in runs if not r.ok]
    good: list[Run] = []
    for run in runs:
        if not run.ok:
            continue
        # full fine-tuning (method=full) has no targets or r: the baseline row, below
        missing = [a for a in (rows, cols) if a not in run.sweep and not is_full(run)]
        if missing or key not in run.metrics:
            what = f"sweep axis {missing[0]!r}" if missing else f"metric {key!r}"
            known = sorted(run.sweep) if missing else sorted(run.metrics)
            error = f"{what} missing from results (has: {', '.join(known)})"
            failed.append(replace(run, error=error))
        elif not math.isfinite(run.metrics[key]):
            failed.append(replace(run, error=f"metric {key!r} is {run.metrics[key]}"))
        else:
            good.append(run)
    selection = None
    if select_by and good:
        selection = select_lr(good, select_by, select_seeds)
        good = [r for c in selection.choices for r in c.runs]
        failed += selection.excluded
    full = [r for r in good if is_full(r)]
    good = [r for r in good if not is_full(r)]
    if not good:
        hint = f"{len(failed)} failed/incomplete run(s): " + "; ".join(
            f"{r.name}: {r.error}" for r in failed[:5]
        )
        raise ReportError(
            f"no successful run has metric {key!r} and axes {rows!r}/{cols!r}. {hint}. "
            "Check --metric (e.g. bleu, rouge_l, train.final_loss) and --rows/--cols."
        )

    metrics = pd.DataFrame([r.metrics for r in good])
    scales = {k: 100.0 if is_percent(k, metrics[k].dropna()) else 1.0 for k in sorted(metrics)}
    axes = pd.DataFrame([r.sweep for r in good]).astype(object)
    candidates = [a for a in (*SPLIT_AXES, *split) if a in axes and a not in (rows, cols)]
    by_cell = axes.groupby([rows, cols], sort=False, dropna=False)
    splitting = [
        a for a in dict.fromkeys(candidates) if (by_cell[a].nunique(dropna=True) > 1).any()
    ]

    frame = pd.concat([axes[[rows, cols, *splitting]], metrics * pd.Series(scales)], axis=1)
    frame["_run"] = range(len(good))
    sections, mixed = [], []
    for fixed, part in (
        frame.groupby(splitting, sort=False, dropna=False) if splitting else [((), frame)]
    ):
        fixed = dict(zip(splitting, fixed if isinstance(fixed, tuple) else (fixed,)))
        cells = {}
        for (row, col), grp in part.groupby([rows, cols], sort=False, dropna=False):
            members = [good[i] for i in grp["_run"]]
            diffs = cell_differences(members)
            if diffs:
                where = ", ".join(f"{a}={v}" for a, v in {rows: row, cols: col, **fixed}.items())
                text = describe_differences(f"cell {where}", diffs)
                if not allow_mixed:
                    raise ReportError(
                        f"{text}. A cell averages seeds only: rerun the odd runs, put the axis in "
                        "--rows/--cols/--split, or pass --allow-mixed to average anyway "
                        "(the difference is then listed in the report)."
                    )
                mixed.append(text)
            cell = _make_cell(row, col, members, grp, key, list(scales))
            if selection is not None:
                picks = {id(c): c for c in map(selection.choice_of, members) if c is not None}
                cell.lr = next(iter(picks.values())) if len(picks) == 1 else None
            cells[(row, col)] = cell
        sections.append(
            Section(
                fixed=fixed,
                rows=sorted({rc[0] for rc in cells}, key=lambda v: sort_key(rows, v)),
                cols=sorted({rc[1] for rc in cells}, key=lambda v: sort_key(cols, v)),
                cells=cells,
            )
        )
    sections.sort(key=lambda s: [sort_key(a, v) for a, v in s.fixed.items()])
    report = Report(metric, rows, cols, sections, failed, runs, scales, mixed, init_of(good),
                    selection)  # fmt: skip
    if full:
        report.baseline = _baseline(full, key, scales, selection, allow_mixed, mixed)
    return report


def is_full(run: Run) -> bool:
    """A full fine-tuning run (``method=full``: every base weight trained, no LoRA axes)."""
    return run.sweep.get("method") == "full" or run.recipe.get("method") == "full"


def _baseline(runs: list[Run], key: str, scales: dict[str, float], selection: Selection | None,
              allow_mixed: bool, mixed: list[str]) -> Cell:  # fmt: skip
    """The full fine-tuning row: one cell over its runs (seeds, at the picked lr)."""
    diffs = cell_differences(runs)
    if diffs:
        text = describe_differences("the full fine-tuning runs", diffs)
        if not allow_mixed:
            raise ReportError(f"{text}. Report full fine-tuning runs of one recipe (or pass "
                              "--allow-mixed)")  # fmt: skip
        mixed.append(text)
    metrics = pd.DataFrame([r.metrics for r in runs])
    cols = [k for k in scales if k in metrics]
    grp = metrics[cols] * pd.Series({k: scales[k] for k in cols})
    if key not in grp or grp[key].isna().all():
        raise ReportError(f"the full fine-tuning runs have no {key!r}")
    cell = _make_cell("full", None, runs, grp, key, cols)
    if selection is not None:
        picks = {id(c): c for c in map(selection.choice_of, runs) if c is not None}
        cell.lr = next(iter(picks.values())) if len(picks) == 1 else None
    return cell


def _make_cell(
    row: Any, col: Any, runs: list[Run], grp: pd.DataFrame, key: str, metric_cols: list[str]
) -> Cell:
    stats = {}
    for k in metric_cols:
        values = grp[k].dropna().to_numpy(float)
        if values.size:
            stats[k] = mean_std(values)
    counts = [r.trainable for r in runs if r.trainable is not None]
    trainable = Counter(counts).most_common(1)[0][0] if counts else None
    mean, std = stats[key]
    return Cell(row, col, runs, mean, std, t_interval(grp[key].to_numpy(float)), trainable, stats)


def default_metric(runs: list[Run]) -> str:
    """The main_metric most runs declare, else "bleu"."""
    names = Counter(r.main_metric for r in runs if r.main_metric)
    return names.most_common(1)[0][0] if names else "bleu"
