"""The report's command line (python -m lora_jax.report, console script lora-jax-report)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from lora_jax.report.aggregate import aggregate, default_metric
from lora_jax.report.collect import ReportError, collect_runs, collect_wandb_runs
from lora_jax.report.compare import compare, render_compare
from lora_jax.report.matched import DEFAULT_TOL, match_params, write_matched
from lora_jax.report.render import write_report

USAGE = """\
    python -m lora_jax.report multirun/rank_table/2025-01-01_12-00-00 [--metric bleu] [--out DIR]
                              [--rows targets --cols r] [--split lr] [--allow-mixed]
    python -m lora_jax.report multirun/lr_grid/STAMP --select-by val_loss   (each cell at its best lr)
    python -m lora_jax.report DIR1 DIR2 ... --select-by val_loss --select-seeds 0   (a study's parts)
    python -m lora_jax.report DIR --compare "targets=up,down r=8" "targets=q,k,v,o r=2"
    python -m lora_jax.report DIR --compare "targets=up,down r=8" "targets=q,v r=26" --metric validation.loss
    python -m lora_jax.report multirun/matched_params/STAMP --match-params [--match-tol 0.02]
    python -m lora_jax.report --wandb entity/project [--group NAME] [--out DIR]
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m lora_jax.report",
        description="Sweep results -> the rank x target table (Markdown, CSV, LaTeX, plots), "
        "with mean ± the 95% Student-t interval over seeds (n shown); --select-by picks each "
        "cell's lr on validation; --compare runs the paired bootstrap over test items and seeds; "
        "--match-params puts target sets side by side at equal trainable-parameter count.",
        usage=USAGE,
    )
    p.add_argument("multirun_dir", nargs="*",
                   help="Hydra multirun dir(s) (multirun/NAME/STAMP); several are read as one "
                   "sweep (e.g. the parts of a study)")  # fmt: skip
    p.add_argument("--wandb", metavar="ENTITY/PROJECT", help="read runs from W&B instead")
    p.add_argument("--group", help="W&B group (the sweep name) to restrict --wandb to")
    p.add_argument(
        "--metric",
        help="main metric (default: the runs' main_metric, else bleu); "
        "eval metrics by name, others as train.final_loss or validation.loss",
    )
    p.add_argument("--out", help="output dir (default: <multirun dir>/report, or ./report)")
    p.add_argument("--rows", default="targets", help="sweep axis for rows (default: targets)")
    p.add_argument("--cols", default="r", help="sweep axis for columns (default: r)")
    p.add_argument("--split", action="append", default=[], metavar="AXIS",
                   help="also split tables by this sweep axis (repeatable); alpha, scale, "
                   "scaling, model and task always split")  # fmt: skip
    p.add_argument("--allow-mixed", action="store_true",
                   help="average cells whose runs differ beyond the seed (listed in the report) "
                   "instead of refusing")  # fmt: skip
    p.add_argument("--select-by", metavar="val_loss|val_METRIC",
                   help="for sweeps crossing each cell with an lr grid: pick each cell's "
                   "optim.lr by the mean validation score over seeds (val_loss: "
                   "metrics.validation.loss, lower is better; val_<metric>: "
                   "metrics.validation.<metric>, higher is better) and report the test "
                   "metrics at that lr; warns when the pick is the grid's smallest or largest")  # fmt: skip
    p.add_argument("--select-seeds", type=int, nargs="+", metavar="SEED",
                   help="--select-by on these seeds' runs only (the lr chosen on seed 0, the "
                   "other seeds run at the chosen lr); the table keeps every seed")  # fmt: skip
    p.add_argument("--compare", nargs=2, metavar=("A", "B"),
                   help='paired bootstrap of A − B over test items and seeds; A, B: "axis=value '
                   '..." selecting runs; a run-level --metric (validation.loss) gets the paired '
                   't-test over seeds')  # fmt: skip
    p.add_argument("--n-boot", type=int, default=10_000, help="bootstrap replicates (--compare)")
    p.add_argument("--match-params", action="store_true",
                   help="instead of the rank x target table: rows of equal trainable-parameter "
                   "count (the runs' recorded params.trainable), one column per target set, each "
                   "cell mean ± the 95%% t interval at its r (writes matched.md, matched.csv)")  # fmt: skip
    p.add_argument("--match-tol", type=float, default=DEFAULT_TOL, metavar="REL",
                   help="--match-params: counts share a row when (largest − smallest) ≤ REL × "
                   "largest (default %(default)s = 1%%; 0 = equal counts only)")  # fmt: skip
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if bool(args.multirun_dir) == bool(args.wandb):
        parser.error("give exactly one of: a multirun dir, or --wandb ENTITY/PROJECT")
    if args.select_seeds and not args.select_by:
        parser.error("--select-seeds goes with --select-by")
    if args.compare and args.select_by:
        parser.error("--select-by is for the table; with --compare put lr=<value> in A and B")
    if args.match_params and (args.compare or (args.rows, args.cols) != ("targets", "r")):
        parser.error("--match-params tabulates target sets at r; drop --compare/--rows/--cols")
    if not 0 <= args.match_tol < 1:
        parser.error(f"--match-tol must be in [0, 1); got {args.match_tol}")
    try:
        runs = (
            collect_wandb_runs(args.wandb, args.group)
            if args.wandb
            else [run for d in args.multirun_dir for run in collect_runs(d)]
        )
        metric = args.metric or default_metric(runs)
        if args.compare:
            result, a, b = compare(runs, *args.compare, metric=metric, n_boot=args.n_boot)
            print(render_compare(result, *args.compare, metric, a, b))
            return 0
        report = aggregate(runs, metric, args.rows, args.cols, args.split, args.allow_mixed,
                           args.select_by, args.select_seeds)  # fmt: skip
    except ReportError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for warning in report.selection.warnings if report.selection else ():
        print(f"warning: {warning}", file=sys.stderr)
    out = args.out or (Path(args.multirun_dir[0]) / "report" if args.multirun_dir
                       else Path("report"))  # fmt: skip
    if args.match_params:
        paths = write_matched(match_params(report, args.match_tol), out)
        print(paths["matched.md"].read_text())
        print(f"wrote {', '.join(sorted(paths))} to {out}")
        return 0
    paths = write_report(report, out, plots=not args.no_plots)
    print(paths["report.md"].read_text())
    print(f"wrote {', '.join(sorted(paths))} to {out}")
    return 0
