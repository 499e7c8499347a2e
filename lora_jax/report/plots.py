"""PNG plots for a sweep report: metric vs the column axis (log2) per row, and vs trainable params.

One pair of plots per report section (a section = one value of the axes that split the sweep,
e.g. alpha); error bars are the 95% Student-t interval of the mean over seeds, as in the
tables (none for n=1 cells).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from lora_jax.report.aggregate import Report, Section


def _suffix(section: Section) -> str:
    if not section.fixed:
        return ""
    text = "_".join(f"{a}-{v}" for a, v in section.fixed.items())
    return "_" + re.sub(r"[^A-Za-z0-9.=-]+", "-", text)


def _numeric(values: list) -> bool:
    return all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)


def plot_report(report: Report, out: Path) -> list[Path]:
    """Write <metric>_vs_<cols>[_<section>].png and <metric>_vs_params[...].png; returns paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from lora_jax.report.aggregate import metric_key

    key = metric_key(report.metric)
    ylabel = report.metric + (" (×100)" if report.scales[key] == 100.0 else "")
    name = re.sub(r"[^A-Za-z0-9]+", "_", report.metric)
    paths = []
    for section in report.sections:
        title = ", ".join(f"{a}={v}" for a, v in section.fixed.items())
        numeric_cols = _numeric(section.cols)
        positive = numeric_cols and all(c > 0 for c in section.cols)

        fig, ax = plt.subplots(figsize=(6, 4))
        for row in section.rows:
            cells = [section.cells[(row, c)] for c in section.cols if (row, c) in section.cells]
            xs = (
                [c.col for c in cells]
                if numeric_cols
                else [section.cols.index(c.col) for c in cells]
            )
            ys = [c.mean for c in cells]
            errs = [c.half or 0.0 for c in cells]
            ax.errorbar(xs, ys, yerr=errs, marker="o", capsize=3, label=str(row))
        if report.baseline is not None:  # full fine-tuning: a level, not a curve over r
            ax.axhline(report.baseline.mean, color="k", ls="--", lw=1, label="full fine-tuning")
        if positive:
            ax.set_xscale("log", base=2)
            ax.set_xticks(section.cols, [str(c) for c in section.cols])
        elif not numeric_cols:
            ax.set_xticks(range(len(section.cols)), [str(c) for c in section.cols])
        ax.set(xlabel=report.cols_axis, ylabel=ylabel, title=title or None)
        ax.legend(title=report.rows_axis, fontsize="small")
        ax.grid(alpha=0.3)
        path = out / f"{name}_vs_{report.cols_axis}{_suffix(section)}.png"
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        plt.close(fig)
        paths.append(path)

        cells = [c for c in section.cells.values() if c.trainable]
        if not cells:
            continue
        fig, ax = plt.subplots(figsize=(6, 4))
        for row in section.rows:
            mine = sorted((c for c in cells if c.row == row), key=lambda c: c.trainable)
            if mine:
                ax.errorbar(
                    [c.trainable for c in mine],
                    [c.mean for c in mine],
                    yerr=[c.half or 0.0 for c in mine],
                    marker="o",
                    capsize=3,
                    label=str(row),
                )
                for c in mine:
                    ax.annotate(
                        f"{report.cols_axis}={c.col}",
                        (c.trainable, c.mean),
                        fontsize=6,
                        xytext=(3, 3),
                        textcoords="offset points",
                    )
        b = report.baseline
        if b is not None and b.trainable:  # full fine-tuning: every weight
            ax.errorbar([b.trainable], [b.mean], yerr=[b.half or 0.0], marker="s", color="k",
                        capsize=3, label="full fine-tuning")  # fmt: skip
        ax.set_xscale("log")
        ax.set(xlabel="trainable parameters", ylabel=ylabel, title=title or None)
        ax.legend(title=report.rows_axis, fontsize="small")
        ax.grid(alpha=0.3)
        path = out / f"{name}_vs_params{_suffix(section)}.png"
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        plt.close(fig)
        paths.append(path)
    return paths
