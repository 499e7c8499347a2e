"""``python -m lora_jax.analyze RUN_DIR [RUN_DIR ...] --out DIR``: the paper's Section 7 on
trained runs (lora_jax/analysis.py for the definitions).

Writes to ``DIR``:
- ``modules.csv``: per run × layer × module, ‖ΔW‖_F, effective rank, top singular values and
  ``a_moved`` = ‖A − A₀‖_F / ‖A₀‖_F (how far training moved A from its random init);
- ``amplification.csv`` [P §7.3, Table 7]: ‖W‖_F, ‖ΔW‖_F, ‖UᵀWV‖_F for ΔW's / W's / random
  top-r directions and the factor ‖ΔW‖_F / ‖UᵀWV‖_F; ``amplification_summary.csv``: means per
  run × module;
- for every pair of runs (the lower rank first), φ on the directions ``--phi-on`` picks
  (``A``, the default and the paper's [P §7.2]: A's right-singular vectors, input space, and
  on the output side B's left-singular vectors; ``deltaW``: ΔW = s·BA's right- and
  left-singular vectors): ``phi_<tag>_<a>_vs_<b>.png``, heatmaps of φ(i, j) for four layers ×
  each module, like [P Fig. 3/4], with ``<tag>`` = ``A`` / ``B`` or ``deltaW_right`` /
  ``deltaW_left``; ``phi_grid.csv`` (those layers' full grids, input side);
  ``phi_summary.csv`` (per layer × module: φ(1,1), φ at (min r, min r), grid mean, and the
  same for the output side, ``phi_out_*``) and ``phi_by_layer_<A|deltaW>.png``. Both CSVs
  carry the choice in a ``phi_on`` column; titles, the printed table's header and the W&B keys
  name it too;
and uploads the figures and tables to W&B when ``--logger wandb`` (default: the first run's
logger).
"""

from __future__ import annotations

import argparse
import csv
import itertools
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lora_jax.analysis import subspace as an
from lora_jax.lora.params import iter_adapters
from lora_jax.lora.targeting import module_id


def run_label(cfg: dict[str, Any], run_dir: Path) -> str:
    """ "r8-s0" from a run's lora rank and seed; the folder name if absent."""
    try:
        return f"r{cfg['lora']['r']}-s{cfg['seed']}"
    except (KeyError, TypeError):
        return run_dir.name


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> Path:
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        for row in rows:
            w.writerow({k: f"{v:.6g}" if isinstance(v, float) else v for k, v in row.items()})
    return path


def analyse_runs(run_dirs: Sequence[str | Path]) -> list[dict[str, Any]]:
    """Per run: label, config, ΔW blocks and the frozen W of each block (one base load per
    model source)."""
    from lora_jax.models.registry import lora_modules
    from lora_jax.run.run_adapter import load_base, load_run_adapter, run_config

    bases: dict[str, Any] = {}
    runs = []
    for d in map(Path, run_dirs):
        cfg = run_config(d)
        src = cfg["model"]["source"]
        if src not in bases:
            bases[src] = load_base(src)
        ra = load_run_adapter(d, base=bases[src])
        modules = lora_modules(ra.model.config)
        blocks = an.delta_blocks(ra.lora, base=(ra.model.params, modules))
        a0 = {
            f"{module_id(p)}.{n}": np.asarray(ad["a"]) for p, n, ad in iter_adapters(ra.init_lora)
        }
        a1 = {f"{module_id(p)}.{n}": np.asarray(ad["a"]) for p, n, ad in iter_adapters(ra.lora)}
        moved = {k: float(np.linalg.norm(a1[k] - a0[k]) / np.linalg.norm(a0[k])) for k in a0}
        weights = {}
        for b in blocks:
            names = next(v for k, v in modules.items() if ".".join(b.path).endswith(k))
            weights[b.key] = an.base_block(ra.model.params, b, len(names), names.index(b.module))
        runs.append({"label": run_label(cfg, d), "dir": d, "config": cfg, "blocks": blocks,
                     "weights": weights, "a_moved": moved, "num_layers": ra.model.config.num_layers})  # fmt: skip
    labels = [r["label"] for r in runs]
    if len(set(labels)) < len(labels):  # same r and seed: fall back to folder names
        for r in runs:
            r["label"] = re.sub(r"[^A-Za-z0-9_.-]+", "-", r["dir"].name)
    return runs


def module_rows(runs: list[dict]) -> list[dict[str, Any]]:
    rows = []
    for run in runs:
        for b in run["blocks"]:
            st = an.module_stats(b)
            sv = st.pop("singular_values")
            rows.append({"run": run["label"], **st, "a_moved": run["a_moved"][b.key],
                         "sv_top": " ".join(f"{x:.4g}" for x in sv)})  # fmt: skip
    return rows


def amplification_rows(runs: list[dict], seed: int = 0) -> list[dict[str, Any]]:
    rng = np.random.default_rng(seed)
    rows = []
    for run in runs:
        for b in run["blocks"]:
            amp = an.amplification(run["weights"][b.key], b.delta, b.rank, rng, (b.u, b.v))
            rows.append({"run": run["label"], "key": b.key, "layer": b.layer,
                         "module": b.module, **amp})  # fmt: skip
    return rows


def summarise(rows: list[dict[str, Any]], by: tuple[str, ...], cols: tuple[str, ...]) -> list:
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault(tuple(row[k] for k in by), []).append(row)
    return [
        {**dict(zip(by, key)), "n": len(g), **{c: float(np.mean([x[c] for x in g])) for c in cols}}
        for key, g in groups.items()
    ]


def figure_layers(num_layers: int) -> list[int]:
    """Four layers spread over the depth, as the paper's Fig. 3 shows layers 1, 32, 64, 96."""
    return sorted({0, num_layers // 3, (2 * num_layers) // 3, num_layers - 1})


def plot_phi(grids: dict[str, np.ndarray], blocks: list[an.Block], layers: list[int],
             title: str, labels: tuple[str, str], path: Path) -> Path:  # fmt: skip
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    mods = sorted({b.module for b in blocks}, key="qkvo".find)
    by = {(b.module, b.layer): b.key for b in blocks if b.key in grids}
    fig, axes = plt.subplots(len(mods), len(layers), squeeze=False, layout="constrained",
                             figsize=(2.6 * len(layers) + 1, 2.5 * len(mods) + 0.6))  # fmt: skip
    im = None
    for (mi, mod), (li, layer) in itertools.product(enumerate(mods), enumerate(layers)):
        ax = axes[mi][li]
        key = by.get((mod, layer))
        if key is None:
            ax.axis("off")
            continue
        g = grids[key]
        im = ax.imshow(g, vmin=0, vmax=1, cmap="viridis", aspect="auto", origin="lower",
                       extent=(0.5, g.shape[1] + 0.5, 0.5, g.shape[0] + 0.5))  # fmt: skip
        ax.set_title(f"W{mod}, layer {layer}", fontsize=9)
        ax.set_xlabel(f"j ({labels[1]})", fontsize=8)
        ax.set_ylabel(f"i ({labels[0]})", fontsize=8)
    if im is not None:
        fig.colorbar(im, ax=axes, shrink=0.8, label="φ(i, j)")
    fig.suptitle(title, fontsize=10)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def plot_phi_by_layer(summary: list[dict[str, Any]], path: Path, on: str = "A") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.5))
    for (pair, mod), rows in itertools.groupby(
        sorted(summary, key=lambda r: (r["pair"], r["module"], r["layer"])),
        key=lambda r: (r["pair"], r["module"]),
    ):
        rows = list(rows)
        ax.plot([r["layer"] for r in rows], [r["phi_1_1"] for r in rows], marker=".",
                label=f"{pair}, W{mod}")  # fmt: skip
    ax.set_xlabel("layer")
    ax.set_ylabel("φ(1, 1): top directions")
    ax.set_ylim(0, 1.02)
    ax.legend(fontsize=7)
    ax.set_title(f"φ(1, 1) on {an.describe_phi(on, 'right')}", fontsize=9)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def phi_outputs(
    runs: list[dict], out: Path, grid_max: int = 64, on: str = "A"
) -> tuple[list, list, list[Path]]:
    """φ on ``on``'s directions (lora_jax.analysis.subspace.directions) for every pair of runs;
    ``phi_grid.csv`` rows keep i, j ≤ ``grid_max`` (the PNGs show the full grids)."""
    summary, grid_rows, figs = [], [], []
    for r1, r2 in itertools.combinations(runs, 2):
        if r1["blocks"][0].rank > r2["blocks"][0].rank:
            r1, r2 = r2, r1
        pair = f"{r1['label']}_vs_{r2['label']}"
        grids = an.compare(r1["blocks"], r2["blocks"], on=on)
        grids_out = an.compare(r1["blocks"], r2["blocks"], side="left", on=on)
        layers = figure_layers(r1["num_layers"])
        for b in r1["blocks"]:
            if b.key not in grids:
                continue
            g = grids[b.key]
            k = min(g.shape)
            summary.append({"pair": pair, "phi_on": on, "key": b.key, "layer": b.layer,
                            "module": b.module, "r1": g.shape[0], "r2": g.shape[1],
                            "phi_1_1": float(g[0, 0]),
                            "phi_k_k": float(g[k - 1, k - 1]), "phi_mean": float(g.mean()),
                            "phi_out_1_1": float(grids_out[b.key][0, 0]),
                            "phi_out_mean": float(grids_out[b.key].mean())})  # fmt: skip
            if b.layer in layers:
                for (i, j), v in np.ndenumerate(g[:grid_max, :grid_max]):
                    grid_rows.append({"pair": pair, "phi_on": on, "layer": b.layer,
                                      "module": b.module, "i": i + 1, "j": j + 1,
                                      "phi": round(float(v), 5)})  # fmt: skip
        labels = (r1["label"], r2["label"])
        for side, g in (("right", grids), ("left", grids_out)):
            title = f"φ on {an.describe_phi(on, side)}: {labels[0]} (i) vs {labels[1]} (j)"
            path = out / f"phi_{an.phi_tag(on, side)}_{pair}.png"
            figs.append(plot_phi(g, r1["blocks"], layers, title, labels, path))
    if summary:
        figs.append(plot_phi_by_layer(summary, out / f"phi_by_layer_{on}.png", on))
    return summary, grid_rows, figs


def upload(
    project: str | None, mode: str | None, out: Path, tables: dict[str, Path], figs: list[Path]
) -> None:
    import wandb

    run = wandb.init(project=project or "lora-jax", job_type="analysis", mode=mode, dir=str(out))
    for name, path in tables.items():
        with path.open() as f:
            rows = list(csv.reader(f))
        run.log({name: wandb.Table(columns=rows[0], data=rows[1:])})
    run.log({p.stem: wandb.Image(str(p)) for p in figs})
    run.finish()


def main(argv: list[str] | None = None) -> Path:
    p = argparse.ArgumentParser(prog="python -m lora_jax.analyze", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("run_dirs", nargs="+", help="run directories written by lora_jax.run.app")
    p.add_argument("--out", default=None, help="output folder (default: RUN_DIR[0]/analysis)")
    p.add_argument("--logger", choices=("none", "wandb"), default=None,
                   help="upload to W&B (default: what the first run used)")  # fmt: skip
    p.add_argument("--seed", type=int, default=0, help="seed of the random directions")
    p.add_argument("--grid-max", type=int, default=64, help="phi_grid.csv keeps i, j <= this")
    p.add_argument("--phi-on", choices=an.PHI_ON, default="A",
                   help="the directions φ compares: A (default, the paper's [P §7.2]: A's "
                   "right-singular vectors; output side: B's left-singular vectors) or deltaW "
                   "(ΔW = s·BA's right- and left-singular vectors)")  # fmt: skip
    args = p.parse_args(argv)

    out = Path(args.out or Path(args.run_dirs[0]) / "analysis")
    out.mkdir(parents=True, exist_ok=True)
    runs = analyse_runs(args.run_dirs)
    amp = amplification_rows(runs, args.seed)
    cols = ("w_fro", "delta_fro", "proj_delta", "proj_w", "proj_random", "factor")
    tables = {
        "modules": _write_csv(out / "modules.csv", module_rows(runs)),
        "amplification": _write_csv(out / "amplification.csv", amp),
        "amplification_summary": _write_csv(
            out / "amplification_summary.csv", summarise(amp, ("run", "module", "r"), cols)
        ),
    }
    summary, grid_rows, figs = phi_outputs(runs, out, args.grid_max, args.phi_on)
    if summary:
        tables[f"phi_summary_{args.phi_on}"] = _write_csv(out / "phi_summary.csv", summary)
        _write_csv(out / "phi_grid.csv", grid_rows)
        print(_phi_table(summary, args.phi_on))
    print(_amp_table(summarise(amp, ("run", "module", "r"), cols)))
    logger_cfg = runs[0]["config"].get("logger") or {}
    logger = args.logger or logger_cfg.get("name", "none")
    if logger == "wandb":
        # the run's own W&B project and mode; else wandb's defaults (WANDB_PROJECT, WANDB_MODE)
        own = logger_cfg.get("name") == "wandb"
        upload(logger_cfg["project"] if own else None, logger_cfg["mode"] if own else None,
               out, tables, figs)  # fmt: skip
    print(f"wrote {len(tables) + bool(summary)} CSV files and {len(figs)} figures to {out}")
    return out


def _phi_table(summary: list[dict], on: str = "A") -> str:
    cols = ("phi_1_1", "phi_k_k", "phi_mean", "phi_out_1_1", "phi_out_mean")
    s = summarise(summary, ("pair", "module"), cols)
    right, left = an.phi_tag(on, "right"), an.phi_tag(on, "left")
    lines = [f"φ on {on} (--phi-on): {right} = {an.describe_phi(on, 'right')}; "
             f"{left} = {an.describe_phi(on, 'left')}",
             f"pair | module | {right}: mean over layers of φ(1,1) | φ(k,k), k = min r | mean φ | "
             f"{left}: φ(1,1) | mean φ"]  # fmt: skip
    lines += [f"{r['pair']} | W{r['module']} | {r['phi_1_1']:.3f} | {r['phi_k_k']:.3f} | "
              f"{r['phi_mean']:.3f} | {r['phi_out_1_1']:.3f} | {r['phi_out_mean']:.3f}"
              for r in s]  # fmt: skip
    return "\n".join(lines)


def _amp_table(s: list[dict]) -> str:
    lines = ["run | module | r | ‖W‖ | ‖ΔW‖ | ‖UᵀWV‖ ΔW dirs | W dirs | random | factor"]
    lines += [f"{r['run']} | W{r['module']} | {r['r']:.0f} | {r['w_fro']:.2f} | "
              f"{r['delta_fro']:.3f} | {r['proj_delta']:.3f} | {r['proj_w']:.2f} | "
              f"{r['proj_random']:.3f} | {r['factor']:.2f}" for r in s]  # fmt: skip
    return "\n".join(lines)


if __name__ == "__main__":
    main()
