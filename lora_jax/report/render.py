"""Render a Report: Markdown (also printed), LaTeX (booktabs), CSV per cell and per run.

Display rule (one, documented): a metric whose name starts with ``bleu``, ``rouge``,
``meteor``, ``acc`` or ``exact_match`` and whose stored values all lie in [0, 1] is shown ×100
with 1 decimal (BLEU 0.704 -> 70.4, as the paper prints it); every other metric (NIST, CIDEr,
losses) is shown as stored with 2 decimals. ``report.md``/``.tex``/``.csv`` use display units,
``runs.csv`` keeps the raw stored values. A cell reads ``mean ± h (n=K, trainable)``, h the
half-width of the 95% Student-t interval of the mean over the K seeds, t_{0.975, K−1}·s/√K
(lora_jax.report.stats; no ± for K = 1); with ``--select-by`` it also gives the cell's picked
lr. The title names the LoRA init of the runs (config ``lora.init``; "mixed" when they differ).
"Best" is the highest mean, or the lowest for metrics named like a loss or perplexity.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from lora_jax.report.aggregate import Cell, Report, Section, init_of, metric_key
from lora_jax.report.collect import Run
from lora_jax.report.select import Selection, describe
from lora_jax.report.stats import lower_is_better


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


def fmt_cell(cell: Cell, percent: bool) -> str:
    """``mean ± h (n=K, trainable[, lr=…])``: h the 95% t half-width (none for K = 1)."""
    extra = [f"n={cell.n}", fmt_params(cell.trainable)]
    if cell.lr is not None:
        extra.append(
            f"lr={cell.lr.lr:.1e}" + ("" if cell.lr.edge is None else f" ({cell.lr.edge})")
        )
    return f"{fmt_stat(cell.mean, cell.half, percent)} ({', '.join(extra)})"


def _axis_label(axis: str, value: Any) -> str:
    return f"{axis}={value}"


def best_cell(report: Report) -> tuple[Section, Cell]:
    pairs = [(s, c) for s in report.sections for c in s.cells.values()]
    sign = 1 if lower_is_better(report.metric) else -1
    return min(pairs, key=lambda sc: sign * sc[1].mean)


def _seed_note(report: Report) -> str:
    ns = sorted({c.n for s in report.sections for c in s.cells.values()})
    span = str(ns[0]) if len(ns) == 1 else f"{ns[0]}-{ns[-1]}"
    return f"Seeds per cell: {span}."


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
        f"# Sweep report: {report.metric}{unit} by {report.rows_axis} × {report.cols_axis}, "
        f"init: {report.init}",
        "",
    ]
    n_ok = sum(c.n for s in report.sections for c in s.cells.values())
    n_ok += report.baseline.n if report.baseline is not None else 0
    if report.selection:  # the table holds each cell's runs at its pick; the others were read
        n_read = sum(n for ch in report.selection.choices for _, n in ch.scores.values())
        lines.append(f"{n_ok} run(s) in the table at each cell's picked lr ({n_read} scored on "
                     f"validation), {len(report.failed)} failed. {_seed_note(report)}")  # fmt: skip
    else:
        lines.append(f"{n_ok} successful run(s), {len(report.failed)} failed. {_seed_note(report)}")
    picked = ", lr picked on validation: see below" if report.selection else ""
    lines.append(
        f"Cells: mean ± h (n seeds, trainable parameters{picked}), h = t_{{0.975, n−1}}·s/√n the "
        "half-width of the 95% Student-t interval of the mean over seeds (s the sample std; "
        "no interval at n=1); — = not run."
    )
    lines.append("")
    for section in report.sections:
        heading = [f"{a}={v}" for a, v in section.fixed.items()]
        if report.init == "mixed":
            runs = [r for c in section.cells.values() for r in c.runs]
            init = init_of(runs)
            by_row = {row: init_of(c.runs) for (row, _), c in section.cells.items()}
            if init == "mixed" and "mixed" not in by_row.values():  # e.g. rows = variant
                init = "per row (" + ", ".join(f"{r}: {i}" for r, i in by_row.items()) + ")"
            heading.append(f"init: {init}")
        if heading:
            lines += ["## " + ", ".join(heading), ""]
        header, body = _table_rows(report, section, lambda c: fmt_cell(c, percent))
        widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]
        lines += [_pad(header, widths), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
        lines += [_pad(r, widths) for r in body] + [""]
        if len(section.cells) < len(section.rows) * len(section.cols):
            for row in section.rows:
                for col in section.cols:
                    if cell := section.cells.get((row, col)):
                        lines.append(f"- {row}@{report.cols_axis}={col}: {fmt_cell(cell, percent)}")
            lines.append("")
    if report.baseline is not None:
        lines += [f"**Full fine-tuning** (method=full, every weight trained): "
                  f"{fmt_cell(report.baseline, percent)}", ""]  # fmt: skip
    section, cell = best_cell(report)
    where = "".join(f", {a}={v}" for a, v in section.fixed.items())
    lines.append(
        f"**Best cell** ({'lowest' if lower_is_better(report.metric) else 'highest'} mean): "
        f"{report.rows_axis}={cell.row}, {report.cols_axis}={cell.col}{where}: "
        f"{fmt_cell(cell, percent)}"
    )
    lines.append("")
    if report.selection:
        lines += render_selection(report.selection)
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


def render_selection(sel: Selection) -> list[str]:
    """The lr picks as Markdown lines: per cell, the validation mean (seeds) at every lr."""
    better = "lower" if sel.lower_is_better else "higher"
    lines = [
        f"## Learning rate per cell, picked by {sel.select_by} ({sel.key}, {better} is better; "
        "mean over seeds)",
        "",
    ]
    for c in sel.choices:
        scores = "; ".join(
            f"{'**' if lr == c.lr else ''}{lr:.1e}: {mean:.4g} (n={n}){'**' if lr == c.lr else ''}"
            for lr, (mean, n) in c.scores.items()
        )
        lines.append(f"- {describe(c.axes)}: {scores} -> lr={c.lr:.1e}")
    lines.append("")
    if sel.warnings:
        lines += [f"**Warning**: {w}." for w in sel.warnings] + [""]
    return lines


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
        f"% {report.metric} by {report.rows_axis} x {report.cols_axis}, init: {report.init}: "
        "mean $\\pm$ half-width of the 95% Student-t interval over seeds (seeds, trainable "
        "parameters). Generated by python -m lora_jax.report."
    ]
    for section in report.sections:
        if section.fixed:
            out.append("% " + ", ".join(f"{a}={v}" for a, v in section.fixed.items()))
        header, body = _table_rows(
            report,
            section,
            lambda c: (
                fmt_stat(c.mean, c.half, percent, pm=TEX_PM)
                + TEX_PARAMS.format(
                    f"n={c.n}, {fmt_params(c.trainable)}"
                    + ("" if c.lr is None else f", lr={c.lr.lr:.1e}")
                )
            ),
        )
        header = [_tex_escape(h) for h in header]
        out += ["\\begin{tabular}{l" + "c" * len(section.cols) + "}", "\\toprule"]
        out.append(" & ".join(header) + " \\\\")
        out.append("\\midrule")
        for row in body:
            out.append(" & ".join([_tex_escape(row[0])] + row[1:]).replace("—", "--") + " \\\\")
        if report.baseline is not None:
            c = report.baseline
            value = fmt_stat(c.mean, c.half, percent, pm=TEX_PM) + TEX_PARAMS.format(
                f"n={c.n}, {fmt_params(c.trainable)}"
                + ("" if c.lr is None else f", lr={c.lr.lr:.1e}")
            )
            out += ["\\midrule", f"full fine-tuning & \\multicolumn{{{len(section.cols)}}}{{c}}"
                    f"{{{value}}} \\\\"]  # fmt: skip
        out += ["\\bottomrule", "\\end{tabular}", ""]
    return "\n".join(out)


def write_cells_csv(report: Report, path: Path) -> None:
    """One row per cell, display units: targets, r, n, mean, std, the 95% t interval, trainable,
    init, lr (the pick, with --select-by), <metric>_mean/_std."""
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
                "init",
                "lr",
                "metric",
                "scale",
            ]
            + [f"{k}_{s}" for k in keys for s in ("mean", "std")]
        )
        every = [
            (section, row, col, section.cells.get((row, col)))
            for section in report.sections
            for row in section.rows
            for col in section.cols
        ]
        if report.baseline is not None:  # the full fine-tuning row: targets "full", no r
            every.append((report.sections[0], "full", None, report.baseline))
        for section, row, col, c in every:
            if c is None:
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
                    init_of(c.runs),
                    None if c.lr is None else c.lr.lr,
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
