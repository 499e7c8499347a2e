"""``python -m lora_jax.evaluate RUN_DIR [key=value ...]``: re-evaluate a training run by its
dir, with the config it was trained with (its ``config.yaml``, lora_jax.run.saved): the
engine's ``trainer.eval_only`` path loads the run's final adapter and decodes and scores the
eval items exactly as the run's final evaluation did. The record goes to ``RUN_DIR/reeval/``
(``--out-dir`` to change), and the metrics are printed next to the run's own.

``python -m lora_jax.evaluate RUN_DIR_1 RUN_DIR_2 ...`` (or ``--adapters``): many adapters of
one base decoded together (lora_jax.run.evaluate_many).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from lora_jax.console import console
from lora_jax.errors import LoraJaxError


def evaluate_run(run_dir: str | Path, overrides: Sequence[str] = (), out_dir: str | None = None,
                 max_eval_items: int | None = None) -> dict:  # fmt: skip
    """The eval-only record of the run in ``run_dir`` (see the module doc)."""
    from lora_jax.run.app import run
    from lora_jax.run.saved import run_dir_of, saved_config

    src = run_dir_of(run_dir)
    out = Path(out_dir) if out_dir else src / "reeval"
    extra = [f"adapter={src}", "trainer.eval_only=true", "trainer.resume=false",
             "trainer.eval_before=false", f"output_dir={out}", "logger.name=none"]  # fmt: skip
    if max_eval_items is not None:
        extra.append(f"task.max_eval_items={max_eval_items}")
    cfg = saved_config(src, [*overrides, *extra])
    return run(cfg, out)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m lora_jax.evaluate",
                                description=__doc__.split("\n\n")[0])  # fmt: skip
    p.add_argument("run_dirs", nargs="*", metavar="RUN_DIR|key=value",
                   help="training run dirs; key=value overrides apply to a single run dir")  # fmt: skip
    p.add_argument("--adapters", nargs="+", metavar="RUN_DIR",
                   help="many run dirs of one base, decoded together")  # fmt: skip
    p.add_argument("--max-eval-items", type=int, default=None, help="decode only the first N items")
    p.add_argument("--out", help="write the metrics (and predictions) as JSON here")
    p.add_argument(
        "--out-dir", help="single run dir: the re-evaluation's run dir (default RUN_DIR/reeval)"
    )
    args = p.parse_args(argv)
    dirs = [a for a in args.run_dirs if "=" not in a]
    overrides = [a for a in args.run_dirs if "=" in a]
    try:
        if len(dirs) == 1 and not args.adapters:
            res = evaluate_run(dirs[0], overrides, args.out_dir, args.max_eval_items)
            before = json.loads((Path(dirs[0]) / "results.json").read_text())["metrics"]["eval"] \
                if (Path(dirs[0]) / "results.json").is_file() else {}  # fmt: skip
            for k, v in res["metrics"]["eval"].items():
                if isinstance(v, float):
                    was = before.get(k)
                    console.print(f"{k}: {v:.4f}" + (f"  (the run's own: {was:.4f})"
                                                     if isinstance(was, float) else ""))  # fmt: skip
            if args.out:
                Path(args.out).write_text(json.dumps(res["metrics"]["eval"], indent=2))
            return 0 if res["status"] == "ok" else 1
        from lora_jax.run.evaluate_many import evaluate_adapters

        targets = (args.adapters or []) + dirs
        if not targets:
            p.error("give a RUN_DIR (or --adapters RUN_DIR ...)")
        res = evaluate_adapters(targets, args.max_eval_items)
    except (LoraJaxError, FileNotFoundError, ValueError) as e:
        console.print(f"[red]error[/]: {e}", soft_wrap=True)
        return 2
    for r in res:
        vals = ", ".join(f"{k}={v:.4f}" for k, v in r["metrics"].items() if isinstance(v, float))
        console.print(f"{r['name']} ({r['run']}): {vals}")
    if args.out:
        Path(args.out).write_text(json.dumps(res, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
