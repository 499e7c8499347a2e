"""Packed vs sequential: K SmolLM2-135M LoRA configurations, side by side in one process.

    python -m benchmarks.packed --k 5 15 [--steps 8 --max-len 64 --eval-items 4]

Configurations cycle through r ∈ {1, 4, 64} × targets {q,v / attention / all linear}, then
seeds (one data order: trainer.data_seed=0). For each K the same configs run
  sequential: lora_jax.run.app.run per config, what the standard launcher does per job (load the
              base, build the task, compile, train, evaluate);
  packed:     lora_jax.run.jobs.run_jobs on all K (one load, one data pipeline, one
              compiled step, one multi-adapter decode);
sequential first, then packed, in this process. Prints wall time per configuration and
tokens/s (training tokens of all K jobs / total wall time, and the train loop's own rate), and
writes a markdown table (``--out``). Needs LORA_JAX_SMOLLM2_GGUF (scripts: get-smollm2).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

RANKS, TARGETS = (1, 4, 64), ("qv", "attn", "all")


def configs(k: int, steps: int, max_len: int, eval_items: int, batch: int):
    from hydra import compose, initialize_config_dir

    from lora_jax.run import schema

    schema.register()
    combos = list(itertools.product(range(100), RANKS, TARGETS))[:k]  # seed-major: 9 per seed
    common = [
        f"model.source={os.environ['LORA_JAX_SMOLLM2_GGUF']}", "task=e2e_sample",
        "task.options.coco_metrics=false", f"task.max_len={max_len}", "task.max_train_examples=256",
        f"task.max_eval_items={eval_items}", "task.decode.max_new_tokens=8", "task.decode.batch_size=8",
        f"trainer.max_steps={steps}", f"trainer.batch_size={batch}", f"trainer.log_every={steps}",
        "trainer.eval_before=false", "trainer.progress=false", "trainer.data_seed=0", "lora.alpha=16",
    ]  # fmt: skip
    out = []
    with initialize_config_dir(config_dir=str(schema.conf_dir()), version_base="1.3"):
        for seed, r, t in combos:
            out.append(
                compose("config", overrides=[*common, f"lora={t}", f"lora.r={r}", f"seed={seed}"])
            )
    return out


def bench(k: int, args) -> dict:
    from lora_jax.run import app as train
    from lora_jax.run.jobs import run_jobs as run_pack

    cfgs = configs(k, args.steps, args.max_len, args.eval_items, args.batch)
    tmp = Path(tempfile.mkdtemp(prefix=f"packed_bench_k{k}_"))
    t = time.perf_counter()
    seq = [train.run(c, tmp / "seq" / str(i)) for i, c in enumerate(cfgs)]
    t_seq = time.perf_counter() - t
    t = time.perf_counter()
    packed = run_pack(cfgs, [tmp / "packed" / str(i) for i in range(k)])
    t_pack = time.perf_counter() - t
    assert all(r["status"] == "ok" for r in seq + packed), [r["error"] for r in seq + packed]
    tokens = (
        sum(r["metrics"]["train"]["steps"] for r in seq) * args.batch * args.max_len
    )  # upper bound
    loop_seq = sum(
        1 / r["metrics"]["train"]["tokens_per_s"]
        for r in seq
        if r["metrics"]["train"]["tokens_per_s"]
    )
    row = {
        "k": k,
        "seq_s": t_seq, "packed_s": t_pack, "speedup": t_seq / t_pack,
        "seq_s_per_cfg": t_seq / k, "packed_s_per_cfg": t_pack / k,
        "seq_tok_s": tokens / t_seq, "packed_tok_s": tokens / t_pack,
        # train loop only (compile excluded): K configs' tokens per second
        "seq_loop_tok_s": k / loop_seq if loop_seq else None,
        "packed_loop_tok_s": packed[0]["run"]["pack"]["tokens_per_s"],
        "same_final_loss": max(abs(a["metrics"]["train"]["final_loss"] - b["metrics"]["train"]["final_loss"])
                               for a, b in zip(seq, packed)),  # fmt: skip
    }  # fmt: skip
    shutil.rmtree(tmp, ignore_errors=True)
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--k", type=int, nargs="+", default=[5, 15])
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--max-len", type=int, default=64)
    p.add_argument("--eval-items", type=int, default=4)
    p.add_argument("--out", default=None, help="append the markdown table here")
    args = p.parse_args()
    import jax

    from lora_jax.run.app import quiet_libraries

    quiet_libraries()
    rows = [bench(k, args) for k in args.k]
    head = ("| K | sequential s (per config) | packed s (per config) | speed-up | tokens/s seq → packed "
            "(total wall; batch x max_len per step) | train-loop tokens/s seq → packed | max final-loss diff |")  # fmt: skip
    lines = [head, "|" + "---|" * 7]
    for r in rows:
        lines.append(
            f"| {r['k']} | {r['seq_s']:.0f} ({r['seq_s_per_cfg']:.1f}) | {r['packed_s']:.0f} "
            f"({r['packed_s_per_cfg']:.1f}) | {r['speedup']:.2f}x | {r['seq_tok_s']:.0f} → "
            f"{r['packed_tok_s']:.0f} | {r['seq_loop_tok_s'] or float('nan'):.0f} → "
            f"{r['packed_loop_tok_s'] or float('nan'):.0f} | {r['same_final_loss']:.1e} |"
        )
    table = "\n".join(lines)
    info = (f"{jax.devices()[0].device_kind}, steps={args.steps}, batch={args.batch}, max_len={args.max_len}, "
            f"eval items={args.eval_items}")  # fmt: skip
    print(info + "\n" + table)
    print(json.dumps(rows))
    if args.out:
        with open(args.out, "a") as f:
            f.write(f"\n{info}\n\n{table}\n")


if __name__ == "__main__":
    main()
