"""Phase 2 of experiments/study_fair_smollm2.sh: one Hydra config per cell of a phase-1 part
at the lr its seed-0 validation loss picked (lora_jax.report.select_lr, as `report --select-by val_loss`
picks it), written to STUDY/conf/study_cell/<name>.yaml; prints the names, comma-separated, for
`+study_cell=...`.

    python experiments/study_cells.py STUDY rank/p1 [rank/p1w ...]
    python experiments/study_cells.py --widen STUDY rank/p1

The parts given are pooled (a cell's lrs may come from several parts). --widen: the cells whose
pick sits on an edge of their lr grid, each at the next half-decade lr past that edge (1e-2 ->
3e-2, 1e-3 -> 3e-4): the one widening round of the study (its header says why); nothing printed
when every pick is interior.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import yaml

from lora_jax.report.collect import collect_runs
from lora_jax.report.select import select_lr


def next_lr(lr: float, up: bool) -> float:
    """The half-decade grid's neighbour of lr (1, 3 x 10^k): 1e-2 -> 3e-2 / 3e-3."""
    e = round(2 * math.log10(lr)) / 2 + (0.5 if up else -0.5)
    return float(f"{(1 if e == math.floor(e) else 3) * 10.0 ** math.floor(e):.0e}")


def main(study: str, parts: list[str], widen: bool = False) -> list[str]:
    out = Path(study) / "conf" / "study_cell"
    out.mkdir(parents=True, exist_ok=True)
    runs = []
    for part in parts:
        if not (Path(study) / part).is_dir():
            raise SystemExit(f"{study}/{part} is missing: run that part first")
        runs += collect_runs(Path(study) / part)
    names = []
    for choice in select_lr(runs, "val_loss", seeds=[0]).choices:
        lr = choice.lr
        if widen:
            if choice.edge not in ("smallest", "largest"):
                continue
            lr = next_lr(lr, up=choice.edge == "largest")
        cfg = choice.runs[0].recipe  # flat resolved config of the picked run
        cell: dict = {"optim": {"lr": lr}}
        if cfg.get("method") == "full":
            cell["method"] = "full"
            name = "full"
        else:
            targets, r = cfg["lora.targets"], int(cfg["lora.r"])
            cell["lora"] = {"targets": targets, "r": r}
            label = targets if isinstance(targets, str) else "-".join(targets)
            name = f"{label}_r{r}"
        name = f"{parts[0].split('/')[0]}_{name}".replace(",", "-")
        if widen:
            name += f"_lr{lr:.0e}".replace("-0", "-")
        text = "# @package _global_\n" + yaml.safe_dump(cell, sort_keys=True)
        (out / f"{name}.yaml").write_text(text)
        names.append(name)
    return names


if __name__ == "__main__":
    args = sys.argv[1:]
    widen = "--widen" in args
    args = [a for a in args if a != "--widen"]
    print(",".join(main(args[0], args[1:], widen)))
