"""Render a Report: Markdown (also printed), LaTeX (booktabs), CSV per cell and per run.

Display rule (one, documented): a metric whose name starts with ``bleu``, ``rouge``,
``meteor``, ``acc`` or ``exact_match`` and whose stored values all lie in [0, 1] is shown ×100
with 1 decimal (BLEU 0.704 -> 70.4, as the paper prints it); every other metric (NIST, CIDEr,
losses) is shown as stored with 2 decimals. ``report.md``/``.tex``/``.csv`` use display units,
``runs.csv`` keeps the raw stored values. A cell reads ``mean ± std [95% CI] (trainable)``;
"Best" is the highest mean, or the lowest for metrics named like a loss or perplexity.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from lora_jax.report.aggregate import Cell, Report, Section, lower_is_better, metric_key
from lora_jax.report.collect import Run


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


def fmt_stat(
    mean: float,
    std: float | None,
    percent: bool,
    pm: str = " ± ",
    ci: tuple[float, float] | None = None,
) -> str:
    digits = 1 if percent else 2
    text = f"{mean:.{digits}f}" + ("" if std is None else f"{pm}{std:.{digits}f}")
    return text + ("" if ci is None else f" [{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]")


def _axis_label(axis: str, value: Any) -> str:
    return f"{axis}={value}"


def best_cell(report: Report) -> tuple[Section, Cell]:
    pairs = [(s, c) for s in report.sections for c in s.cells.values()]
    sign = 1 if lower_is_better(report.metric) else -1
    return min(pairs, key=lambda sc: sign * sc[1].mean)


def _seed_note(report: Report) -> str:
    ns = sorted({c.n for s in report.sections for c in s.cells.values()})
    span = str(ns[0]) if len(ns) == 1 else f"{ns[0]}-{ns[-1]}"
    note = f"Seeds per cell: {span} (mean ± sample std, ddof=1, [95% bootstrap interval of the mean over seeds]"
    return note + ("; n=1 cells show neither)." if ns[0] == 1 else ").")


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
    lines.append("Cells: mean ± std [95% CI] (trainable parameters); — = not run.")
    lines.append("")
    for section in report.sections:
        if section.fixed:
            lines += ["## " + ", ".join(f"{a}={v}" for a, v in section.fixed.items()), ""]
        header, body = _table_rows(
            report,
            section,
            lambda c: f"{fmt_stat(c.mean, c.std, percent, ci=c.ci)} ({fmt_params(c.trainable)})",
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
    if report.mixed:
        lines += [
            f"## Cells averaged over runs that differ beyond the seed ({len(report.mixed)})",
            "",
        ]
        lines += [f"- {text}" for text in report.mixed] + [""]
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
                "ci_low",
                "ci_high",
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
                            *(c.ci or (None, None)),
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
        from lora_jax.report.plots import plot_report

        for p in plot_report(report, out):
            paths[p.name] = p
    return paths
