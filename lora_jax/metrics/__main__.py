"""Score system outputs from files; prints JSON.

  python -m lora_jax.metrics e2e --hyp out.txt --refs testset_w_refs.csv [--no-coco]
                                [--nist-mode pymteval|mteval]
  python -m lora_jax.metrics wikisql --hyp out.txt --data validation.jsonl
  python -m lora_jax.metrics samsum --hyp out.txt --data test.jsonl

--hyp: UTF-8 text, one hypothesis per line (a trailing newline is fine, empty lines are empty
hypotheses). e2e: one line per distinct MR of --refs, in order of first appearance; --refs is
a CSV with columns mr, ref (the challenge format; several refs per MR). wikisql: one SQL query
per example of --data (JSONL/JSON/parquet in the hub schema: question, table{header, types,
rows}, sql{sel, agg, conds{column_index, operator_index, condition}}), in the target format
SELECT AGG("col") FROM table WHERE "col" = 'value' AND ...; samsum: one summary per example
of --data (columns dialogue, summary).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from lora_jax.errors import DataError, MissingFile
from lora_jax.metrics.mteval import NIST_MODES
from lora_jax.tasks import get_task


def read_hyps(path: str) -> list[str]:
    """One hypothesis per line; a final newline does not add an empty hypothesis."""
    p = Path(path)
    if not p.is_file():
        raise MissingFile(f"hypothesis file not found: {path}")
    text = p.read_text(encoding="utf-8")
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [line.rstrip("\r") for line in lines]


def score_files(
    task_name: str, hyp_path: str, data_path: str, coco: bool = True, nist_mode: str = "pymteval"
) -> dict:
    """Score a hypothesis file against a reference/data file for one task."""
    cfg: dict = {"dataset": None, "data_files": {"eval": data_path}}
    if task_name == "e2e":
        cfg["coco_metrics"] = coco
        cfg["nist_mode"] = nist_mode
    task = get_task(task_name, **cfg)
    items = task.eval_groups(task.load("eval"))
    hyps = read_hyps(hyp_path)
    if len(hyps) != len(items):
        unit = "distinct MRs" if task_name == "e2e" else "examples"
        raise DataError(
            f"{hyp_path} has {len(hyps)} hypothesis lines but {data_path} has {len(items)} "
            f"{unit}; write exactly one line per item, in order"
        )
    return task.score(hyps, items)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m lora_jax.metrics",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="task", required=True)
    e2e = sub.add_parser("e2e", help="BLEU, NIST, METEOR, ROUGE-L, CIDEr (E2E scorer)")
    e2e.add_argument("--hyp", required=True, help="one line per distinct MR")
    e2e.add_argument("--refs", required=True, help="CSV with columns mr, ref")
    e2e.add_argument("--no-coco", action="store_true", help="skip the Java metrics")
    e2e.add_argument(
        "--nist-mode",
        choices=NIST_MODES,
        default="pymteval",
        help="pymteval: the official scorer's -p (default); mteval: its Perl default",
    )
    for name, helptext in (
        ("wikisql", "logical-form and execution accuracy"),
        ("samsum", "ROUGE-1/2/L F1"),
    ):
        p = sub.add_parser(name, help=helptext)
        p.add_argument("--hyp", required=True, help="one line per example")
        p.add_argument("--data", required=True, help="JSONL/JSON/CSV/parquet in the hub schema")
    args = parser.parse_args(argv)
    data = args.refs if args.task == "e2e" else args.data
    try:
        scores = score_files(
            args.task,
            args.hyp,
            data,
            coco=not getattr(args, "no_coco", False),
            nist_mode=getattr(args, "nist_mode", "pymteval"),
        )
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(scores, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
