"""experiments/study_cells.py: the fair study's phase-2 cells (each cell at its seed-0 pick,
pooled over parts) and its one widening round (edge picks, one half-decade past the edge)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import yaml

from tests.sweeps.test_select_by import _write

ROOT = Path(__file__).resolve().parents[2]


def _cells():
    spec = importlib.util.spec_from_file_location(
        "study_cells", ROOT / "experiments/study_cells.py"
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize(
    ("lr", "up", "want"),
    [(1e-2, True, 3e-2), (3e-3, True, 1e-2), (1e-3, False, 3e-4), (3e-3, False, 1e-3),
     (3e-4, True, 1e-3), (3e-5, False, 1e-5)],
)  # fmt: skip
def test_next_lr_walks_the_half_decade_grid(lr: float, up: bool, want: float) -> None:
    assert _cells().next_lr(lr, up) == want  # exact: written to the configs as a clean float


def _read(study: Path, name: str) -> dict:
    text = (study / "conf/study_cell" / f"{name}.yaml").read_text()
    assert text.startswith("# @package _global_\n")
    return yaml.safe_load(text)


def test_widen_picks_the_edge_cells_and_the_pooled_parts_pick_among_all_lrs(tmp_path: Path) -> None:
    """By hand: r=1 is best at the grid's bottom, r=4 at its top, r=8 inside; a seed-1 run
    (lower loss, other lr) must not sway a seed-0 pick."""
    p1 = tmp_path / "rank/p1"
    losses = {1: (1.7, 1.8, 1.9), 4: (2.0, 1.9, 1.8), 8: (2.0, 1.7, 1.9)}
    idx = 0
    for r, row in losses.items():
        for lr, loss in zip((1e-3, 3e-3, 1e-2), row):
            _write(p1, idx, "q,v", r, lr, 0, {"loss": loss}, 0.5)
            idx += 1
    _write(p1, idx, "q,v", 8, 1e-2, 1, {"loss": 1.0}, 0.5)
    cells = _cells()
    names = cells.main(str(tmp_path), ["rank/p1"], widen=True)
    assert names == ["rank_q-v_r1_lr3e-4", "rank_q-v_r4_lr3e-2"]
    assert _read(tmp_path, names[0]) == {"lora": {"r": 1, "targets": "q,v"}, "optim": {"lr": 3e-4}}
    assert _read(tmp_path, names[1])["optim"] == {"lr": 3e-2}
    assert cells.main(str(tmp_path), ["rank/p1"]) == ["rank_q-v_r1", "rank_q-v_r4", "rank_q-v_r8"]
    assert _read(tmp_path, "rank_q-v_r8")["optim"] == {"lr": 3e-3}

    # the widened runs: r=4 improves at 3e-2 (the pick moves there), r=1 does not at 3e-4
    p1w = tmp_path / "rank/p1w"
    _write(p1w, 0, "q,v", 1, 3e-4, 0, {"loss": 1.75}, 0.5)
    _write(p1w, 1, "q,v", 4, 3e-2, 0, {"loss": 1.6}, 0.5)
    cells.main(str(tmp_path), ["rank/p1", "rank/p1w"])
    assert [_read(tmp_path, f"rank_q-v_r{r}")["optim"]["lr"] for r in (1, 4, 8)] == [
        1e-3,
        3e-2,
        3e-3,
    ]


def test_a_missing_part_names_the_part_to_run(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="rank/p1 is missing: run that part first"):
        _cells().main(str(tmp_path), ["rank/p1"])
