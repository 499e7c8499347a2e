"""What ``hydra.launcher.pack_size=auto`` sees: the packed step's compiled memory per K on
SmolLM2-135M, with and without the memory levers.

    python -m benchmarks.packed_memory [--batch 8 --max-len 128 --budget-gib 16 --settings plain ...]

The configurations of benchmarks/packed.py (r ∈ {1, 4} × {q,v / attention / all linear}: one
rank band), one group. Per setting (plain; trainer.remat=full + trainer.scan=true;
trainer.loss_chunk=128; all three) it compiles the packed step for K = 1 and 2 (XLA's
memory analysis, nothing runs) and prints arguments / temporaries / total, the bytes per
adapter, and the K that lora_jax.run.pack_memory.choose_pack_size picks for ``--budget-gib``
(verified by its own compile). Needs LORA_JAX_SMOLLM2_GGUF.
"""

from __future__ import annotations

import argparse
import time

from omegaconf import open_dict

SETTINGS = {
    "plain": {},
    "remat=full, scan": {"remat": "full", "scan": True},
    "loss_chunk=128": {"loss_chunk": 128},
    "all three": {"remat": "full", "scan": True, "loss_chunk": 128},
}


def main() -> None:
    from benchmarks.packed import configs
    from lora_jax.run.pack_memory import MIB, choose_pack_size, group_step_memory

    p = argparse.ArgumentParser()
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--max-len", type=int, default=128)
    p.add_argument("--budget-gib", type=float, default=16.0)
    p.add_argument("--jobs", type=int, default=64, help="group size the pick is capped at")
    p.add_argument("--settings", nargs="*", default=list(SETTINGS), choices=list(SETTINGS))
    args = p.parse_args()
    base = [c for c in configs(6, 8, args.max_len, 4, args.batch) if int(c.lora.r) <= 16]
    budget = int(args.budget_gib * 1024 * MIB)
    print(f"batch {args.batch} x max_len {args.max_len}, {len(base)} configs' union layout, "
          f"budget {args.budget_gib} GiB\n")  # fmt: skip
    print("| setting | K=1 args / temp / total MiB | K=2 total MiB | per adapter MiB | "
          f"K for {args.budget_gib:g} GiB (verified) | compile s |")  # fmt: skip
    print("|---|---|---|---|---|---|")
    for name in args.settings:
        levers = SETTINGS[name]
        cfgs = []
        for c in base:
            c = c.copy()
            with open_dict(c):
                c.trainer.update(levers)
            cfgs.append(c)
        t = time.perf_counter()
        measure = group_step_memory(cfgs)
        m1, m2 = measure(1), measure(2)
        s = choose_pack_size(lambda k, m=measure: m(k).total, budget, args.jobs)
        dt = time.perf_counter() - t
        print(f"| {name} | {m1.argument / MIB:.0f} / {m1.temp / MIB:.0f} / {m1.total / MIB:.0f} | "
              f"{m2.total / MIB:.0f} | {(m2.total - m1.total) / MIB:.0f} | {s.k} "
              f"({', '.join(f'K={k}: {b / MIB:.0f}' for k, b in sorted(s.measured.items()))}) | "
              f"{dt:.0f} |", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
