"""Sweep results -> the paper's rank x target table (Markdown, CSV, LaTeX) and plots.

    python -m lora_jax.report multirun/2025-01-01/12-00-00 [--metric bleu] [--out DIR]
                              [--rows targets --cols r]
    python -m lora_jax.report --wandb entity/project [--group NAME] [--out DIR]

Inputs: one ``results.json`` per run (written by ``lora_jax.train``), found by walking the given
directory; a run dir with ``.hydra/overrides.yaml`` but no ``results.json`` is a failed run whose
axes are parsed from its overrides. With ``--wandb`` the same schema is read from each W&B run's
summary (nested, or flattened with "/" or "."), the axes falling back to its config.

Aggregation: cells are keyed by (rows, cols) of the run's ``sweep`` dict; a cell shows the mean
± sample std (ddof=1) over seeds of the main metric plus its trainable-parameter count; n=1
shows no ±. Sweep axes other than rows/cols/seed that vary *within* a cell split the report
into one table per value (e.g. an alpha sweep); axes fixed by (rows, cols), like alpha = 2r,
do not. Failed runs are excluded from the means and listed with their error.

Display rule (one, documented): a metric whose name starts with ``bleu``, ``rouge``,
``meteor``, ``acc`` or ``exact_match`` and whose stored values all lie in [0, 1] is shown ×100
with 1 decimal (BLEU 0.704 -> 70.4, as the paper prints it); every other metric (NIST, CIDEr,
losses) is shown as stored with 2 decimals. ``report.md``/``.tex``/``.csv`` use display units,
``runs.csv`` keeps the raw stored values. "Best" is the highest mean, or the lowest for metrics
named like a loss or perplexity.

Outputs in ``--out`` (default ``<multirun dir>/report``): report.md (also printed), report.csv
(one row per cell), report.tex (booktabs), runs.csv (one row per run), and PNG plots from
``lora_jax.report_plots``.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import statistics
import sys
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

# Display order of target sets (the presets of lora_jax.lora.targeting, qk placed before qv as in
# the paper's Table 5); anything else follows, alphabetically.
TARGET_ORDER = ("q", "k", "v", "o", "qk", "qv", "attn", "mlp", "all")
PERCENT_PREFIXES = ("bleu", "rouge", "meteor", "acc", "exact_match")
LOWER_IS_BETTER = ("loss", "ppl", "perplexity")
# Override keys (last dotted component) that name a sweep axis under another name.
AXIS_ALIASES = {"rank": "r", "lora_r": "r", "target": "targets", "target_modules": "targets"}
AXIS_ALIASES |= {"lora_alpha": "alpha"}


class ReportError(ValueError):
    """Bad report input (no runs, unknown metric or axis); the message says how to fix it."""


@dataclass
class Run:
    """One training run as the report sees it.

    metrics: flat {"eval.bleu": 0.70, "train.final_loss": 1.2, ...} of raw stored values.
    """

    name: str
    ok: bool
    error: str | None
    sweep: dict[str, Any]
    metrics: dict[str, float] = field(default_factory=dict)
    trainable: int | None = None
    main_metric: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------- loading


def _norm(value: Any) -> Any:
    """Canonical axis value: 4.0 -> 4, ["q", "v"] -> "qv", ["q_proj", "v_proj"] -> "q_proj,v_proj"."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, (list, tuple)):
        items = [str(_norm(v)) for v in value]
        return "".join(items) if all(len(s) == 1 for s in items) else ",".join(items)
    if isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            return value
        return int(number) if number.is_integer() and "." not in value else number
    return value


def _flatten(tree: Any, prefix: str = "") -> dict[str, float]:
    """Numeric leaves of a nested dict as {"a.b": value}; non-numbers and bools are dropped."""
    out: dict[str, float] = {}
    if isinstance(tree, dict):
        for key, value in tree.items():
            out |= _flatten(value, f"{prefix}{key}.")
    elif isinstance(tree, (int, float)) and not isinstance(tree, bool):
        out[prefix[:-1]] = float(tree)
    return out


def run_from_results(results: dict[str, Any], fallback_name: str) -> Run:
    """Parse one results.json dict (schema in the train app) into a Run."""
    run_info = results.get("run") or {}
    status = results.get("status")
    sweep = {k: _norm(v) for k, v in (results.get("sweep") or {}).items()}
    trainable = (results.get("params") or {}).get("trainable")
    extra = {
        "wall_time_s": run_info.get("wall_time_s"),
        "peak_bytes": (results.get("memory") or {}).get("peak_bytes"),
        "dir": run_info.get("dir"),
    }
    return Run(
        name=str(run_info.get("name") or fallback_name),
        ok=status == "ok",
        error=None if status == "ok" else str(results.get("error") or f"status {status!r}"),
        sweep=sweep,
        metrics=_flatten(results.get("metrics") or {}),
        trainable=None if trainable is None else int(trainable),
        main_metric=results.get("main_metric"),
        extra=extra,
    )


def parse_overrides(lines: Iterable[str]) -> dict[str, Any]:
    """Hydra overrides ["lora.r=4", "+seed=1", "lora.targets=qv"] -> {"r": 4, "seed": 1, ...}.

    The axis name is the override key's last dotted component (with AXIS_ALIASES applied).
    """
    axes: dict[str, Any] = {}
    for line in lines:
        if "=" not in line:
            continue
        key, value = line.split("=", 1)
        key = key.lstrip("+~").rsplit(".", 1)[-1]
        value = value.strip().strip("'\"")
        if value.startswith("[") and value.endswith("]"):
            value = [v.strip().strip("'\"") for v in value[1:-1].split(",") if v.strip()]
        axes[AXIS_ALIASES.get(key, key)] = _norm(value)
    return axes


def _read_overrides(path: Path) -> list[str]:
    import yaml  # PyYAML ships with hydra-core/omegaconf

    data = yaml.safe_load(path.read_text()) or []
    return [str(x) for x in data]


def load_run_dir(run_dir: Path, root: Path) -> Run:
    """A Hydra run dir -> Run; no results.json means the run died before writing it."""
    rel = str(run_dir.relative_to(root)) if run_dir != root else run_dir.name
    results_path = run_dir / "results.json"
    if results_path.is_file():
        try:
            results = json.loads(results_path.read_text())
        except json.JSONDecodeError as e:
            return Run(rel, False, f"unreadable results.json: {e}", {})
        run = run_from_results(results, rel)
        run.extra["dir"] = str(run_dir)
        return run
    overrides = run_dir / ".hydra" / "overrides.yaml"
    sweep = parse_overrides(_read_overrides(overrides)) if overrides.is_file() else {}
    error = "no results.json (the run crashed, was killed, or is still running)"
    return Run(rel, False, error, sweep, extra={"dir": str(run_dir)})


def collect_runs(root: str | Path) -> list[Run]:
    """All runs under a multirun dir (or one run dir): dirs holding results.json or .hydra/."""
    root = Path(root)
    if not root.is_dir():
        raise ReportError(
            f"{root} is not a directory; pass a Hydra multirun dir (multirun/DATE/TIME)"
        )
    run_dirs = {p.parent for p in root.rglob("results.json")}
    run_dirs |= {p.parent.parent for p in root.rglob(".hydra/overrides.yaml")}
    if not run_dirs:
        raise ReportError(
            f"no runs under {root}: expected run dirs with results.json or .hydra/overrides.yaml "
            "(point at a multirun dir like multirun/DATE/TIME, or use --wandb ENTITY/PROJECT)"
        )
    # natural order: numeric parts by value, before names ("2" < "10" < "failed_0")
    key = lambda p: [
        (0, int(s), "") if s.isdigit() else (1, 0, s) for s in p.relative_to(root).parts
    ]
    return [load_run_dir(d, root) for d in sorted(run_dirs, key=key)]


def _unflatten(flat: dict[str, Any]) -> dict[str, Any]:
    """{"metrics/eval/bleu": 1} or {"metrics.eval.bleu": 1} -> nested; nested input passes."""
    tree: dict[str, Any] = {}
    for key, value in flat.items():
        if key.startswith("_"):  # W&B internals (_step, _runtime, _wandb)
            continue
        parts = key.replace("/", ".").split(".")
        node = tree
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                break
        else:
            leaf = node.get(parts[-1])
            if isinstance(leaf, dict) and isinstance(value, dict):
                leaf |= value
            else:
                node[parts[-1]] = value
    return tree


def collect_wandb_runs(path: str, group: str | None = None, api: Any = None) -> list[Run]:
    """Runs of a W&B project "entity/project" (optionally one group) -> Runs.

    Summary keys follow the results.json schema; the axes are the summary's "sweep", completed
    from config["sweep"] or, failing that, from config leaves named like an axis (r, targets,
    alpha, seed, ...).
    """
    if api is None:
        import wandb

        api = wandb.Api()
    filters = {"group": group} if group else None
    runs: list[Run] = []
    for wrun in api.runs(path, filters=filters):
        summary = getattr(wrun, "summary_metrics", None)
        if summary is None:
            summary = dict(wrun.summary)
        results = _unflatten(dict(summary))
        config = _unflatten(dict(wrun.config or {}))
        from_config = config.get("sweep") or _axes_from_config(config)
        results["sweep"] = from_config | (results.get("sweep") or {})
        results.setdefault("run", {}).setdefault("name", wrun.name)
        if "status" not in results:
            state = getattr(wrun, "state", "unknown")
            results["status"] = "failed"
            results["error"] = f"no results in the W&B summary (run state: {state})"
        runs.append(run_from_results(results, wrun.name))
    if not runs:
        where = f"group {group!r} of {path}" if group else path
        raise ReportError(f"no W&B runs in {where}: check the entity/project and --group")
    return runs


def _axes_from_config(config: dict[str, Any]) -> dict[str, Any]:
    wanted = {"model", "task", "targets", "r", "alpha", "scaling", "seed"}
    flat = {}
    stack = [config]
    while stack:
        node = stack.pop()
        for key, value in node.items():
            key = AXIS_ALIASES.get(key, key)
            if isinstance(value, dict):
                stack.append(value)
            elif key in wanted and key not in flat:
                flat[key] = _norm(value)
    return flat


# ---------------------------------------------------------------- aggregation


def metric_key(metric: str) -> str:
    """ "bleu" -> "eval.bleu"; dotted names ("train.final_loss") are paths under metrics."""
    return metric if "." in metric else f"eval.{metric}"


def is_percent(name: str, values: Iterable[float]) -> bool:
    """The display rule: bleu/rouge/meteor/acc*/exact_match stored as fractions -> ×100."""
    leaf = name.rsplit(".", 1)[-1].lower()
    values = [v for v in values if math.isfinite(v)]
    return leaf.startswith(PERCENT_PREFIXES) and bool(values) and all(0 <= v <= 1 for v in values)


def lower_is_better(metric: str) -> bool:
    return any(word in metric.lower() for word in LOWER_IS_BETTER)


@dataclass
class Cell:
    """Runs sharing one (row, col) value; stats in display units."""

    row: Any
    col: Any
    runs: list[Run]
    mean: float
    std: float | None  # None when n == 1
    trainable: int | None
    stats: dict[str, tuple[float, float | None]]  # every metric: (mean, std)

    @property
    def n(self) -> int:
        return len(self.runs)


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


def _sort_key(axis: str, value: Any) -> tuple:
    if axis == "targets" and value in TARGET_ORDER:
        return (0, TARGET_ORDER.index(value), "")
    if isinstance(value, (int, float)):
        return (1, value, "")
    return (2, 0, str(value))


def _mean_std(values: Sequence[float]) -> tuple[float, float | None]:
    mean = statistics.fmean(values)
    return mean, (statistics.stdev(values) if len(values) > 1 else None)


def aggregate(runs: list[Run], metric: str, rows: str = "targets", cols: str = "r") -> Report:
    """Group successful runs into cells over (rows, cols); see the module docstring."""
    key = metric_key(metric)
    failed = [r for r in runs if not r.ok]
    good: list[Run] = []
    for run in runs:
        if not run.ok:
            continue
        missing = [a for a in (rows, cols) if a not in run.sweep]
        if missing or key not in run.metrics:
            what = f"sweep axis {missing[0]!r}" if missing else f"metric {key!r}"
            known = sorted(run.sweep) if missing else sorted(run.metrics)
            error = f"{what} missing from results (has: {', '.join(known)})"
            failed.append(replace(run, error=error))
        elif not math.isfinite(run.metrics[key]):
            failed.append(replace(run, error=f"metric {key!r} is {run.metrics[key]}"))
        else:
            good.append(run)
    if not good:
        hint = f"{len(failed)} failed/incomplete run(s): " + "; ".join(
            f"{r.name}: {r.error}" for r in failed[:5]
        )
        raise ReportError(
            f"no successful run has metric {key!r} and axes {rows!r}/{cols!r}. {hint}. "
            "Check --metric (e.g. bleu, rouge_l, train.final_loss) and --rows/--cols."
        )

    all_keys = sorted({k for r in good for k in r.metrics})
    scales = {
        k: 100.0 if is_percent(k, [r.metrics[k] for r in good if k in r.metrics]) else 1.0
        for k in all_keys
    }

    by_rc: dict[tuple, list[Run]] = defaultdict(list)
    for run in good:
        by_rc[(run.sweep[rows], run.sweep[cols])].append(run)
    other = sorted({a for r in good for a in r.sweep} - {rows, cols, "seed"})
    splitting = [
        a
        for a in other
        if any(len({r.sweep.get(a) for r in grp} - {None}) > 1 for grp in by_rc.values())
    ]

    groups: dict[tuple, dict[tuple, list[Run]]] = defaultdict(lambda: defaultdict(list))
    for run in good:
        fixed = tuple(run.sweep.get(a) for a in splitting)
        groups[fixed][(run.sweep[rows], run.sweep[cols])].append(run)

    sections = []
    for fixed in sorted(groups, key=lambda f: [_sort_key(a, v) for a, v in zip(splitting, f)]):
        cells = {rc: _make_cell(rc, rs, key, scales) for rc, rs in groups[fixed].items()}
        sections.append(
            Section(
                fixed=dict(zip(splitting, fixed)),
                rows=sorted({rc[0] for rc in cells}, key=lambda v: _sort_key(rows, v)),
                cols=sorted({rc[1] for rc in cells}, key=lambda v: _sort_key(cols, v)),
                cells=cells,
            )
        )
    return Report(metric, rows, cols, sections, failed, runs, scales)


def _make_cell(rc: tuple, runs: list[Run], key: str, scales: dict[str, float]) -> Cell:
    stats = {}
    for k, scale in scales.items():
        values = [r.metrics[k] * scale for r in runs if k in r.metrics]
        if values:
            stats[k] = _mean_std(values)
    counts = [r.trainable for r in runs if r.trainable is not None]
    trainable = Counter(counts).most_common(1)[0][0] if counts else None
    mean, std = stats[key]
    return Cell(rc[0], rc[1], runs, mean, std, trainable, stats)


# ---------------------------------------------------------------- rendering


def fmt_params(n: int | None) -> str:
    """393216 -> "393.2K", 1572864 -> "1.57M"."""
    if n is None:
        return "?"
    if n >= 1e9:
        return f"{n / 1e9:.2f}B"
    if n >= 1e6:
        return f"{n / 1e6:.2f}M"
    if n >= 1e3:
        return f"{n / 1e3:.1f}K"
    return str(n)


def fmt_stat(mean: float, std: float | None, percent: bool, pm: str = " ± ") -> str:
    digits = 1 if percent else 2
    return f"{mean:.{digits}f}" + ("" if std is None else f"{pm}{std:.{digits}f}")


def _axis_label(axis: str, value: Any) -> str:
    return f"{axis}={value}"


def best_cell(report: Report) -> tuple[Section, Cell]:
    pairs = [(s, c) for s in report.sections for c in s.cells.values()]
    sign = 1 if lower_is_better(report.metric) else -1
    return min(pairs, key=lambda sc: sign * sc[1].mean)


def _seed_note(report: Report) -> str:
    ns = sorted({c.n for s in report.sections for c in s.cells.values()})
    span = str(ns[0]) if len(ns) == 1 else f"{ns[0]}-{ns[-1]}"
    note = f"Seeds per cell: {span} (mean ± sample std, ddof=1"
    return note + ("; n=1 cells show no ±)." if ns[0] == 1 else ").")


def _table_rows(report: Report, section: Section, cell_fmt) -> tuple[list[str], list[list[str]]]:
    header = [report.rows_axis] + [_axis_label(report.cols_axis, c) for c in section.cols]
    body = []
    for row in section.rows:
        line = [str(row)]
        for col in section.cols:
            cell = section.cells.get((row, col))
            line.append("—" if cell is None else cell_fmt(cell))
        body.append(line)
    return header, body


def _pad(row: list[str], widths: list[int]) -> str:
    return "| " + " | ".join(s.ljust(w) for s, w in zip(row, widths)) + " |"


def render_markdown(report: Report) -> str:
    """The whole report as Markdown whose tables also line up in a terminal."""
    key = metric_key(report.metric)
    percent = report.scales[key] == 100.0
    unit = " (×100)" if percent else ""
    lines = [
        f"# Sweep report: {report.metric}{unit} by {report.rows_axis} × {report.cols_axis}",
        "",
    ]
    n_ok = sum(c.n for s in report.sections for c in s.cells.values())
    lines.append(f"{n_ok} successful run(s), {len(report.failed)} failed. {_seed_note(report)}")
    lines.append("Cells: mean ± std (trainable parameters); — = not run.")
    lines.append("")
    for section in report.sections:
        if section.fixed:
            lines += ["## " + ", ".join(f"{a}={v}" for a, v in section.fixed.items()), ""]
        header, body = _table_rows(
            report,
            section,
            lambda c: f"{fmt_stat(c.mean, c.std, percent)} ({fmt_params(c.trainable)})",
        )
        widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]
        lines += [_pad(header, widths), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
        lines += [_pad(r, widths) for r in body] + [""]
        if len(section.cells) < len(section.rows) * len(section.cols):
            for row in section.rows:
                for col in section.cols:
                    if cell := section.cells.get((row, col)):
                        lines.append(
                            f"- {row}@{report.cols_axis}={col}: "
                            f"{fmt_stat(cell.mean, cell.std, percent)} "
                            f"({fmt_params(cell.trainable)}, n={cell.n})"
                        )
            lines.append("")
    section, cell = best_cell(report)
    where = "".join(f", {a}={v}" for a, v in section.fixed.items())
    lines.append(
        f"**Best cell** ({'lowest' if lower_is_better(report.metric) else 'highest'} mean): "
        f"{report.rows_axis}={cell.row}, {report.cols_axis}={cell.col}{where}: "
        f"{fmt_stat(cell.mean, cell.std, percent)} ({fmt_params(cell.trainable)}, n={cell.n})"
    )
    lines.append("")
    if report.failed:
        lines += [f"## Failed runs ({len(report.failed)}, excluded from the means)", ""]
        for run in report.failed:
            axes = ", ".join(f"{k}={v}" for k, v in sorted(run.sweep.items()))
            lines.append(f"- {run.name} [{axes}]: {run.error}")
        lines.append("")
    return "\n".join(lines)


def _tex_escape(text: str) -> str:
    for a, b in (
        ("\\", r"\textbackslash{}"),
        ("_", r"\_"),
        ("%", r"\%"),
        ("&", r"\&"),
        ("#", r"\#"),
        ("$", r"\$"),
    ):
        text = text.replace(a, b)
    return text


TEX_PM = " $\\pm$ "
TEX_PARAMS = " {{\\scriptsize ({})}}"


def render_latex(report: Report) -> str:
    """One booktabs tabular per section (needs \\usepackage{booktabs})."""
    percent = report.scales[metric_key(report.metric)] == 100.0
    out = [
        f"% {report.metric} by {report.rows_axis} x {report.cols_axis}: mean $\\pm$ sample std "
        "over seeds (trainable parameters). Generated by python -m lora_jax.report."
    ]
    for section in report.sections:
        if section.fixed:
            out.append("% " + ", ".join(f"{a}={v}" for a, v in section.fixed.items()))
        header, body = _table_rows(
            report,
            section,
            lambda c: (
                fmt_stat(c.mean, c.std, percent, pm=TEX_PM)
                + TEX_PARAMS.format(fmt_params(c.trainable))
            ),
        )
        header = [_tex_escape(h) for h in header]
        out += ["\\begin{tabular}{l" + "c" * len(section.cols) + "}", "\\toprule"]
        out.append(" & ".join(header) + " \\\\")
        out.append("\\midrule")
        for row in body:
            out.append(" & ".join([_tex_escape(row[0])] + row[1:]).replace("—", "--") + " \\\\")
        out += ["\\bottomrule", "\\end{tabular}", ""]
    return "\n".join(out)


def write_cells_csv(report: Report, path: Path) -> None:
    """One row per cell, display units: targets, r, n, mean, std, trainable, <metric>_mean/_std."""
    keys = sorted(report.scales)
    fixed_axes = sorted({a for s in report.sections for a in s.fixed})
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(
            [
                report.rows_axis,
                report.cols_axis,
                *fixed_axes,
                "n",
                "mean",
                "std",
                "trainable",
                "metric",
                "scale",
            ]
            + [f"{k}_{s}" for k in keys for s in ("mean", "std")]
        )
        for section in report.sections:
            for row in section.rows:
                for col in section.cols:
                    if not (c := section.cells.get((row, col))):
                        continue
                    stats = [x for k in keys for x in c.stats.get(k, (None, None))]
                    w.writerow(
                        [
                            row,
                            col,
                            *(section.fixed.get(a) for a in fixed_axes),
                            c.n,
                            c.mean,
                            c.std,
                            c.trainable,
                            metric_key(report.metric),
                            report.scales[metric_key(report.metric)],
                            *stats,
                        ]
                    )


def write_runs_csv(runs: list[Run], path: Path) -> None:
    """One row per run (failed ones too), raw stored metric values."""
    axes = sorted({a for r in runs for a in r.sweep})
    keys = sorted({k for r in runs for k in r.metrics})
    extras = ["wall_time_s", "peak_bytes", "dir"]
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["name", "status", "error", *axes, "trainable", *keys, *extras])
        for r in runs:
            w.writerow(
                [
                    r.name,
                    "ok" if r.ok else "failed",
                    r.error or "",
                    *(r.sweep.get(a) for a in axes),
                    r.trainable,
                    *(r.metrics.get(k) for k in keys),
                    *(r.extra.get(e) for e in extras),
                ]
            )


def write_report(report: Report, out: str | Path, plots: bool = True) -> dict[str, Path]:
    """Write report.md, report.csv, report.tex, runs.csv and the PNG plots; returns the paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {name: out / name for name in ("report.md", "report.csv", "report.tex", "runs.csv")}
    paths["report.md"].write_text(render_markdown(report))
    paths["report.tex"].write_text(render_latex(report))
    write_cells_csv(report, paths["report.csv"])
    write_runs_csv(report.runs, paths["runs.csv"])
    if plots:
        from lora_jax.report_plots import plot_report

        for p in plot_report(report, out):
            paths[p.name] = p
    return paths


def default_metric(runs: list[Run]) -> str:
    """The main_metric most runs declare, else "bleu"."""
    names = Counter(r.main_metric for r in runs if r.main_metric)
    return names.most_common(1)[0][0] if names else "bleu"


# ---------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m lora_jax.report", description=__doc__.split("\n")[0]
    )
    p.add_argument("multirun_dir", nargs="?", help="Hydra multirun dir (multirun/DATE/TIME)")
    p.add_argument("--wandb", metavar="ENTITY/PROJECT", help="read runs from W&B instead")
    p.add_argument("--group", help="W&B group (the sweep name) to restrict --wandb to")
    p.add_argument(
        "--metric",
        help="main metric (default: the runs' main_metric, else bleu); "
        "eval metrics by name, others as train.final_loss",
    )
    p.add_argument("--out", help="output dir (default: <multirun dir>/report, or ./report)")
    p.add_argument("--rows", default="targets", help="sweep axis for rows (default: targets)")
    p.add_argument("--cols", default="r", help="sweep axis for columns (default: r)")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if bool(args.multirun_dir) == bool(args.wandb):
        parser.error("give exactly one of: a multirun dir, or --wandb ENTITY/PROJECT")
    try:
        if args.wandb:
            runs = collect_wandb_runs(args.wandb, args.group)
        else:
            runs = collect_runs(args.multirun_dir)
        report = aggregate(runs, args.metric or default_metric(runs), args.rows, args.cols)
    except ReportError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = args.out or (Path(args.multirun_dir) / "report" if args.multirun_dir else Path("report"))
    paths = write_report(report, out, plots=not args.no_plots)
    print(paths["report.md"].read_text())
    print(f"wrote {', '.join(sorted(paths))} to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
