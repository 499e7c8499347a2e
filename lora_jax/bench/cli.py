"""``python -m lora_jax.bench``: time the jitted train step per case and print tokens/s, step
time, peak memory, trainable params and MFU with the FLOP counts; with ``--peft`` (torch + peft
installed) the same cases in HF PEFT, eager and torch.compile, and the ratios.

    python -m lora_jax.bench --tiny                       # CI: tiny shapes, every case
    python -m lora_jax.bench --cases tinyllama-all-r8 --peft
    python -m lora_jax.bench --cases smollm2-all-r8 --batch 8 --seq 128 --peft   # CPU
"""

from __future__ import annotations

import argparse
import dataclasses
import json

import jax


def main(argv: list[str] | None = None) -> list[dict]:
    from lora_jax.bench.cases import hf_config, lookup, model_config
    from lora_jax.bench.jax_step import run_case

    p = argparse.ArgumentParser(prog="python -m lora_jax.bench", description=__doc__.split("\n")[0])
    p.add_argument("--cases", default="all", help="comma list (default: the table for the backend)")
    p.add_argument("--tiny", action="store_true", help="tiny shapes (CI); no GGUF needed")
    p.add_argument("--batch", type=int, help="override every case's batch size")
    p.add_argument("--seq", type=int, help="override every case's sequence length")
    p.add_argument("--dtype", help="compute dtype (default: bfloat16 on GPU/TPU, float32 on CPU)")
    p.add_argument("--remat", default="none", help="none | block | dots_saveable | full")
    p.add_argument("--loss-chunk", type=int, help="tokens per LM-head chunk in the loss")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--peak-flops", type=float, help="device peak FLOP/s for MFU (CPU: none)")
    p.add_argument(
        "--quant",
        default="none",
        choices=("none", "nf4", "int8"),
        help="QLoRA: frozen kernels stored quantized (PEFT side: bitsandbytes 4/8-bit)",
    )
    p.add_argument("--e2e", metavar="DIR",
                   help="time real E2E batches (DIR/devset.csv, the offline recipe's training "
                   "data) instead of one random full batch; SmolLM2 cases")  # fmt: skip
    p.add_argument("--steps", type=int, default=16, help="--e2e: steps of data per pass")
    p.add_argument("--packing", default="both", choices=("off", "on", "both"),
                   help="--e2e: padded rows, packed rows (data.packing), or both and the ratio")  # fmt: skip
    p.add_argument("--row-len", type=int, help="--e2e: tokens per packed row (data.row_len)")
    p.add_argument("--pack-step", type=int, metavar="MULTIPLE",
                   help="--e2e: data.pack=step, the step in one row of a multiple of MULTIPLE")  # fmt: skip
    p.add_argument("--peft", action="store_true", help="also run HF PEFT eager and compiled")
    p.add_argument("--json", help="write the results to this file")
    a = p.parse_args(argv)
    cpu = jax.default_backend() == "cpu"
    dtype = a.dtype or ("float32" if cpu else "bfloat16")
    dev = jax.devices()[0]
    print(f"backend {jax.default_backend()}, {len(jax.devices())} x {dev.device_kind}, "
          f"compute {dtype}, remat {a.remat}, loss_chunk {a.loss_chunk}")  # fmt: skip
    rows = []
    for case in lookup(a.cases, cpu):
        if a.tiny:
            case = dataclasses.replace(case, batch=2, seq=16)
        case = dataclasses.replace(case, batch=a.batch or case.batch, seq=a.seq or case.seq)
        cfg = model_config(case, a.tiny)
        if a.e2e:
            rows.append(_e2e_case(a, case, cfg, dtype))
            continue
        r = run_case(case, cfg, dtype=dtype, param_dtype=dtype, remat=a.remat,
                     loss_chunk=a.loss_chunk, warmup=a.warmup, repeats=a.repeats,
                     peak=a.peak_flops, quant=a.quant)  # fmt: skip
        row = dataclasses.asdict(r) | {"batch": case.batch, "seq": case.seq}
        mfu = "n/a" if r.mfu is None else f"{100 * r.mfu:.1f}%"
        peak = "n/a" if r.peak_bytes is None else f"{r.peak_bytes / 2**20:.1f} MiB"
        print(f"{case.name:20s} b{case.batch} s{case.seq}: {r.tokens_per_s:10.0f} tok/s  "
              f"step {1e3 * r.step_s:8.1f} ms  peak {peak} ({r.peak_source}; host RSS "
              f"{r.host_rss_mib:.0f} MiB)  frozen {r.frozen_bytes / 2**20:.1f} MiB  trainable {r.trainable:,}  MFU {mfu}  "
              f"FLOPs/step xla {r.flops_xla:.3e} formula {r.flops_formula:.3e}")  # fmt: skip
        if a.peft:
            from lora_jax.bench.peft_step import run_peft

            for variant, comp in (("peft_eager", False), ("peft_compile", True)):
                try:
                    pr = run_peft(
                        case, hf_config(case, a.tiny), comp, a.warmup, a.repeats, quant=a.quant
                    )
                except Exception as e:  # noqa: BLE001 — report and go on with the table
                    row[variant] = {"error": f"{type(e).__name__}: {e}"[:300]}
                    print(f"  {variant}: failed: {row[variant]['error']}")
                    continue
                row[variant] = pr
                print(f"  {variant:13s} {pr['tokens_per_s']:10.0f} tok/s  trainable "
                      f"{pr['trainable']:,}  lora-jax / {variant}: "
                      f"{r.tokens_per_s / pr['tokens_per_s']:.2f}x")  # fmt: skip
        rows.append(row)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=1)
    return rows


def _e2e_case(a: argparse.Namespace, case, cfg, dtype: str) -> dict:
    """One case over real E2E batches, padded and/or packed: real tokens/s, the share of real
    tokens among the positions computed, the shapes compiled, the process's peak RSS so far
    (run --packing on and off in separate processes to compare peak RSS)."""
    from lora_jax.bench.e2e import e2e_batches
    from lora_jax.bench.jax_step import run_case
    from lora_jax.errors import ConfigError

    if cfg is not None:
        raise ConfigError(
            "--e2e needs a real tokenizer: use a smollm2-* or gemma3-* case without --tiny"
        )
    row: dict = {"case": case.name, "batch": case.batch, "seq": case.seq, "steps": a.steps}
    modes = {"off": [False], "on": [True], "both": [False, True]}[a.packing]
    for packed in modes:
        data = lambda tok, p=packed: e2e_batches(tok, a.e2e, case.batch, case.seq, a.steps, p,
                                                 a.row_len, a.pack_step)  # fmt: skip
        r = run_case(case, cfg, dtype=dtype, param_dtype=dtype, remat=a.remat,
                     loss_chunk=a.loss_chunk, repeats=a.repeats, quant=a.quant, data=data,
                     packed_block=case.seq if packed and a.pack_step else None)  # fmt: skip
        name = "packed" if packed else "padded"
        row[name] = dataclasses.asdict(r)
        print(f"{case.name:20s} b{case.batch} max_len {case.seq} {name}: {r.tokens_per_s:8.0f} "
              f"real tok/s  step {1e3 * r.step_s:7.1f} ms  real tokens {100 * r.real_fraction:.0f}% "
              f"of positions  {r.shapes} shapes  host RSS {r.host_rss_mib:.0f} MiB  "
              f"final loss {r.loss:.4f}")  # fmt: skip
    if len(modes) == 2:
        ratio = row["packed"]["tokens_per_s"] / row["padded"]["tokens_per_s"]
        row["packed_over_padded"] = ratio
        print(f"  packed / padded real tok/s: {ratio:.2f}x")
    return row
