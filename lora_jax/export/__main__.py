"""``python -m lora_jax.export RUN_DIR --format peft|merged-hf --out DIR``: a trained run's
adapter as a PEFT adapter folder, or the merged model as a transformers folder."""

from __future__ import annotations

import argparse
from pathlib import Path


def main(argv: list[str] | None = None) -> Path:
    p = argparse.ArgumentParser(prog="python -m lora_jax.export", description=__doc__)
    p.add_argument("run_dir", help="a run directory written by python -m lora_jax.train")
    p.add_argument("--format", choices=("peft", "merged-hf"), required=True)
    p.add_argument("--out", required=True, help="output folder (created)")
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
    args = p.parse_args(argv)

    from lora_jax.export import save_merged_hf, save_peft
    from lora_jax.run.run_adapter import load_run_adapter

    ra = load_run_adapter(args.run_dir, args.step)
    source = ra.config["model"]["source"]
    if args.format == "peft":
        base = source if not str(source).endswith(".gguf") else None
        out = save_peft(
            ra.lora,
            ra.model.config,
            args.out,
            use_rslora=ra.lora_config.scaling == "rslora",
            base_model_name_or_path=base,
            params=ra.model.params,  # DoRA on part of a fused kernel: the other blocks' norms
        )
    else:
        out = save_merged_hf(
            ra.model.params, ra.lora, ra.model.config, ra.hf_config, args.out, source
        )
    print(f"wrote {args.format} to {out}")
    return out


if __name__ == "__main__":
    main()
