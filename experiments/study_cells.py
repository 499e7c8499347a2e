"""Phase 2 of experiments/study_fair_smollm2.sh: one Hydra config per cell of a phase-1 part
at the lr its seed-0 validation loss picked (lora_jax.report.select_lr, as `report --select-by val_loss`
picks it), written to STUDY/conf/study_cell/<name>.yaml; prints the names, comma-separated, for
`+study_cell=...`.

    python experiments/study_cells.py multirun/study_fair rank/p1
"""

from __future__ import annotations

import sys
from pathlib import Path

import yaml

from lora_jax.report.collect import collect_runs
from lora_jax.report.select import select_lr


def main(study: str, parts: list[str]) -> list[str]:
    out = Path(study) / "conf" / "study_cell"
    out.mkdir(parents=True, exist_ok=True)
    names = []
    for part in parts:
        if not (Path(study) / part).is_dir():
            raise SystemExit(f"{study}/{part} is missing: run that part first")
        selection = select_lr(collect_runs(Path(study) / part), "val_loss", seeds=[0])
        for choice in selection.choices:
            cfg = choice.runs[0].recipe  # flat resolved config of the picked run
            cell: dict = {"optim": {"lr": choice.lr}}
            if cfg.get("method") == "full":
                cell["method"] = "full"
                name = "full"
            else:
                targets, r = cfg["lora.targets"], int(cfg["lora.r"])
                cell["lora"] = {"targets": targets, "r": r}
                label = targets if isinstance(targets, str) else "-".join(targets)
                name = f"{label}_r{r}"
            name = f"{part.split('/')[0]}_{name}".replace(",", "-")
            text = "# @package _global_\n" + yaml.safe_dump(cell, sort_keys=True)
            (out / f"{name}.yaml").write_text(text)
            names.append(name)
    return names


if __name__ == "__main__":
    print(",".join(main(sys.argv[1], sys.argv[2:])))
