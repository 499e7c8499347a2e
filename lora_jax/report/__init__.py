"""Sweep results -> tables, plots and paired comparisons (python -m lora_jax.report).

collect (run records from run dirs or W&B) -> [select: each cell's lr picked on validation,
``--select-by``] -> aggregate (cells with pandas: mean, std and a 95% Student-t interval over
seeds; a cell whose runs differ beyond the seed is refused or listed) -> render (Markdown,
LaTeX, CSV, plots); compare: the paired bootstrap over test items and seeds (``--compare A B``);
stats: the statistics themselves.
"""

from lora_jax.report.aggregate import (
    Cell,
    Report,
    Section,
    aggregate,
    default_metric,
    is_percent,
    metric_key,
)
from lora_jax.report.cli import build_parser, main
from lora_jax.report.collect import (
    ReportError,
    Run,
    collect_runs,
    collect_wandb_runs,
    load_run_dir,
    parse_overrides,
    run_from_results,
)
from lora_jax.report.compare import compare, parse_spec
from lora_jax.report.render import render_latex, render_markdown, write_report
from lora_jax.report.select import Selection, select_lr
from lora_jax.report.stats import lower_is_better, t_interval

__all__ = [
    "Cell", "Report", "ReportError", "Run", "Section", "Selection", "aggregate", "build_parser",
    "collect_runs", "collect_wandb_runs", "compare", "default_metric", "is_percent",
    "load_run_dir", "lower_is_better", "main", "metric_key", "parse_overrides", "parse_spec",
    "render_latex", "render_markdown", "run_from_results", "select_lr", "t_interval",
    "write_report",
]  # fmt: skip
