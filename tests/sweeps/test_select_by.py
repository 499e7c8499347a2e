"""``python -m lora_jax.report DIR --select-by val_loss|val_<metric>`` on hand-made run records:
each cell (recipe minus optim.lr) gets the lr with the best mean validation score over seeds,
the table shows the test metrics of that lr's runs and the lr, and a pick at the edge of the
grid is warned about. Expected values are computed here by hand from the numbers written."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from lora_jax import report as rep

GRID = (1e-4, 3e-4, 1e-3)
SEEDS = (0, 1, 2)


def _write(root: Path, idx: int, targets: str, r: int, lr: float, seed: int, val: dict,
           bleu: float, init: str = "kaiming") -> Path:  # fmt: skip
    """One run dir with a results.json in the run-record schema (lora_jax/train/record.py)."""
    run_dir = root / str(idx)
    run_dir.mkdir(parents=True)
    record = {
        "status": "ok",
        "error": None,
        "run": {"name": f"run-{idx}", "dir": str(run_dir)},
        "config": {
            "lora": {"targets": targets, "r": r, "alpha": 16, "init": init},
            "optim": {"name": "adamw", "lr": lr},
            "seed": seed,
            "name": f"run-{idx}",
        },
        "sweep": {
            "sweep": "lr_grid",
            "model": "tiny",
            "task": "e2e",
            "targets": targets,
            "r": r,
            "alpha": 16.0,
            "lr": lr,
            "seed": seed,
        },  # fmt: skip
        "params": {"trainable": 100 * r},
        "metrics": {"eval": {"bleu": bleu}, "validation": val},
        "main_metric": "bleu",
    }
    (run_dir / "results.json").write_text(json.dumps(record))
    return run_dir


# Validation loss per (cell, lr) over the 3 seeds; test BLEU per (cell, lr, seed) below.
VAL = {
    ("q,v", 4): {1e-4: [2.30, 2.34, 2.29], 3e-4: [2.21, 2.30, 2.20], 1e-3: [2.25, 2.24, 2.26]},
    ("q", 4): {1e-4: [2.60, 2.58, 2.61], 3e-4: [2.50, 2.49, 2.52], 1e-3: [2.40, 2.45, 2.41]},
}


def _bleu(cell: tuple[str, int], lr: float, seed: int) -> float:
    return 0.60 + 0.01 * GRID.index(lr) + 0.002 * seed + (0.05 if cell[0] == "q,v" else 0.0)


@pytest.fixture
def lr_sweep(tmp_path: Path) -> Path:
    idx = 0
    for cell, by_lr in VAL.items():
        for lr, losses in by_lr.items():
            for seed, loss in zip(SEEDS, losses):
                # validation.bleu is high where the loss is low, but not at the same lr for q
                vbleu = 0.5 - loss / 10 + (0.05 if (cell[0] == "q" and lr == 3e-4) else 0.0)
                _write(tmp_path, idx, *cell, lr, seed, {"loss": loss, "bleu": vbleu},
                       _bleu(cell, lr, seed))  # fmt: skip
                idx += 1
    return tmp_path


def _grid_order() -> list[tuple[tuple[str, int], float, int]]:
    """(cell, lr, seed) in the order the fixture writes run-0, run-1, ..."""
    return [(cell, lr, s) for cell, by_lr in VAL.items() for lr in by_lr for s in SEEDS]


def _by_hand(select: str) -> dict[tuple[str, int], float]:
    """The lr with the best mean over seeds: lowest validation loss, highest validation bleu."""
    out = {}
    for cell, by_lr in VAL.items():
        means = {lr: float(np.mean(v)) for lr, v in by_lr.items()}
        if select == "val_loss":
            out[cell] = min(means, key=means.get)
        else:
            bleu = {lr: 0.5 - m / 10 + (0.05 if (cell[0] == "q" and lr == 3e-4) else 0.0)
                    for lr, m in means.items()}  # fmt: skip
            out[cell] = max(bleu, key=bleu.get)
    return out


def test_picked_lr_and_test_metrics_equal_a_by_hand_computation(lr_sweep: Path) -> None:
    # by hand: q,v means 2.3100 / 2.2367 / 2.2500 -> 3e-4; q means 2.5967 / 2.5033 / 2.4200 -> 1e-3
    assert _by_hand("val_loss") == {("q,v", 4): 3e-4, ("q", 4): 1e-3}
    report = rep.aggregate(rep.collect_runs(lr_sweep), "bleu", select_by="val_loss")
    cells = report.sections[0].cells
    for cell, lr in _by_hand("val_loss").items():
        got = cells[cell]
        assert got.lr.lr == lr and got.n == len(SEEDS)
        assert {r.name for r in got.runs} == {
            f"run-{i}" for i, (c, x, _) in enumerate(_grid_order()) if (c, x) == (cell, lr)
        }
        bleu = [100 * _bleu(cell, lr, s) for s in SEEDS]  # BLEU fractions are shown x100
        assert got.mean == pytest.approx(np.mean(bleu), rel=1e-12)
        assert got.std == pytest.approx(np.std(bleu, ddof=1), rel=1e-12)
        assert list(got.lr.scores) == list(GRID) and got.lr.grid == list(GRID)
        for x in GRID:
            assert got.lr.scores[x] == (pytest.approx(np.mean(VAL[cell][x]), rel=1e-12), 3)
    assert report.init == "kaiming" and not report.failed
    # the table holds the picks' runs; every run read was scored
    n_table, n_read = 2 * len(SEEDS), 2 * len(SEEDS) * len(GRID)
    assert (f"{n_table} run(s) in the table at each cell's picked lr ({n_read} scored on "
            "validation), 0 failed.") in rep.render_markdown(report)  # fmt: skip


def test_val_metric_is_higher_is_better(lr_sweep: Path) -> None:
    # q,v's highest mean validation bleu is at its lowest mean loss (3e-4); q's is at 3e-4, not
    # at its lowest loss (1e-3): the +0.05 there outweighs the loss difference 0.0833/10
    expected = _by_hand("val_bleu")
    assert expected == {("q,v", 4): 3e-4, ("q", 4): 3e-4}
    report = rep.aggregate(rep.collect_runs(lr_sweep), "bleu", select_by="val_bleu")
    for cell, lr in expected.items():
        assert report.sections[0].cells[cell].lr.lr == lr
    assert report.selection.key == "validation.bleu" and not report.selection.lower_is_better
    assert not report.selection.warnings  # both picks are inside the grid


def test_cli_prints_the_lr_and_warns_at_the_edge(lr_sweep: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    assert rep.main([str(lr_sweep), "--select-by", "val_loss", "--out", str(out),
                     "--no-plots"]) == 0  # fmt: skip
    printed = capsys.readouterr()
    md = (out / "report.md").read_text()
    qv = next(line for line in md.splitlines() if line.startswith("| q,v "))
    q = next(line for line in md.splitlines() if line.startswith("| q "))
    assert "lr=3.0e-04)" in qv  # inside the grid: no edge mark
    assert "lr=1.0e-03 (largest)" in q
    # q's pick is the grid's largest lr: one warning, in the report and on stderr; none for q,v
    assert printed.err.count("warning:") == 1
    assert "targets=q: the picked lr 1.0e-03 is the largest of the grid" in printed.err
    assert "**Warning**: targets=q: the picked lr 1.0e-03 is the largest" in md
    assert "targets=q,v: the picked lr" not in md
    assert "**3.0e-04: 2.237 (n=3)**" in md  # q,v's mean validation loss at its pick
    with (out / "report.csv").open() as f:
        rows = {(r["targets"], int(r["r"])): r for r in csv.DictReader(f)}
    assert {k: float(r["lr"]) for k, r in rows.items()} == _by_hand("val_loss")
    with (out / "runs.csv").open() as f:  # every run stays in runs.csv, picked or not
        assert len(list(csv.DictReader(f))) == len(_grid_order())


def test_smallest_lr_pick_warns_and_a_diverged_lr_is_never_picked(tmp_path: Path) -> None:
    """One cell: the smallest lr wins; the largest has a nan seed (diverged), so its mean is
    not finite even though its other seeds have the lowest losses."""
    val = {1e-4: [2.0, 2.1], 3e-4: [2.2, 2.3], 1e-3: [float("nan"), 1.0]}
    idx = 0
    for lr, losses in val.items():
        for seed, loss in enumerate(losses):
            _write(tmp_path, idx, "q,v", 8, lr, seed, {"loss": loss}, 0.6)
            idx += 1
    report = rep.aggregate(rep.collect_runs(tmp_path), "bleu", select_by="val_loss")
    choice = report.sections[0].cells[("q,v", 8)].lr
    assert choice.lr == 1e-4 and choice.edge == "smallest"
    (warning,) = report.selection.warnings
    assert "smallest of the grid" in warning and "widen the grid" in warning


def test_runs_without_the_validation_metric_are_listed_and_bad_names_refused(
    lr_sweep: Path, capsys
) -> None:
    _write(lr_sweep, 99, "q", 4, 3e-4, 5, {}, 0.7)  # validation was off in this run
    report = rep.aggregate(rep.collect_runs(lr_sweep), "bleu", select_by="val_loss")
    (failed,) = report.failed
    assert failed.name == "run-99" and "no validation.loss" in failed.error
    assert report.sections[0].cells[("q", 4)].n == len(SEEDS)  # not averaged in
    assert rep.main([str(lr_sweep), "--select-by", "loss", "--no-plots"]) == 2
    assert "val_loss or val_<metric>" in capsys.readouterr().err


def test_select_seeds_picks_on_seed_0_and_keeps_every_seed_at_the_pick(tmp_path: Path) -> None:
    """The study protocol: seed 0 runs the whole grid, seeds 1 and 2 run only at seed 0's pick.
    By hand: seed 0's losses 2.30 / 2.21 / 2.25 -> 3e-4. Seeds 1, 2 at 3e-4 have bad losses
    (2.40, 2.41): averaged over every seed (the default), 3e-4's mean 2.34 would lose to 1e-3's
    2.25, so the pick would move; with --select-seeds 0 it stays, and the cell's test mean is
    over all three seeds at 3e-4."""
    runs = [(1e-4, 0, 2.30), (3e-4, 0, 2.21), (1e-3, 0, 2.25), (3e-4, 1, 2.40), (3e-4, 2, 2.41)]
    for idx, (lr, seed, loss) in enumerate(runs):
        _write(tmp_path, idx, "q,v", 4, lr, seed, {"loss": loss}, 0.6 + 0.01 * seed)
    everyone = rep.aggregate(rep.collect_runs(tmp_path), "bleu", select_by="val_loss")
    assert everyone.sections[0].cells[("q,v", 4)].lr.lr == 1e-3  # (2.21+2.40+2.41)/3 = 2.34
    report = rep.aggregate(rep.collect_runs(tmp_path), "bleu", select_by="val_loss",
                           select_seeds=[0])  # fmt: skip
    cell = report.sections[0].cells[("q,v", 4)]
    assert cell.lr.lr == 3e-4 and cell.n == 3
    assert cell.lr.scores[3e-4] == (pytest.approx(2.21), 1)
    assert cell.mean == pytest.approx(100 * np.mean([0.60, 0.61, 0.62]), rel=1e-12)
    with pytest.raises(SystemExit) as e:  # --select-seeds needs --select-by
        rep.main([str(tmp_path), "--select-seeds", "0", "--no-plots"])
    assert e.value.code == 2


def test_full_finetuning_runs_are_the_baseline_row(tmp_path: Path) -> None:
    """method=full runs (no targets, no r) form the table's full fine-tuning row, with their own
    lr picked on validation, in the Markdown, LaTeX and CSV outputs."""
    idx = 0
    for lr, loss in ((1e-4, 2.3), (3e-4, 2.2)):
        for seed in (0, 1):
            _write(tmp_path, idx, "q,v", 4, lr, seed, {"loss": loss + 0.01 * seed}, 0.6)
            idx += 1
    for lr, loss in ((1e-5, 2.0), (3e-5, 2.1)):  # the smaller lr wins for full fine-tuning
        for seed in (0, 1):
            d = _write(tmp_path, idx, "full", 4, lr, seed, {"loss": loss}, 0.65 + 0.01 * seed)
            rec = json.loads((d / "results.json").read_text())
            rec["config"]["method"] = "full"
            rec["sweep"].update(method="full", r=None, alpha=None)
            rec["params"]["trainable"] = 135_000_000
            (d / "results.json").write_text(json.dumps(rec))
            idx += 1
    report = rep.aggregate(rep.collect_runs(tmp_path), "bleu", select_by="val_loss")
    base = report.baseline
    assert base is not None and base.n == 2 and base.lr.lr == 1e-5
    assert base.mean == pytest.approx(100 * np.mean([0.65, 0.66]), rel=1e-12)
    assert list(report.sections[0].cells) == [("q,v", 4)]  # not a cell of the grid
    out = tmp_path / "out"
    assert rep.main([str(tmp_path), "--select-by", "val_loss", "--out", str(out)]) == 0
    md = (out / "report.md").read_text()
    assert "**Full fine-tuning** (method=full, every weight trained): 65.5 ± 6.4 (n=2, 135" in md
    # the lr lines name each cell by the axes it has: no "r=None" for full fine-tuning, no
    # "method=None" for a LoRA cell
    assert "- targets=full method=full: **1.0e-05: 2 (n=2)**" in md and "=None" not in md
    assert "full fine-tuning & \\multicolumn{1}{c}{65.5" in (out / "report.tex").read_text()
    with (out / "report.csv").open() as f:
        rows = {r["targets"]: r for r in csv.DictReader(f)}
    assert float(rows["full"]["lr"]) == 1e-5 and rows["full"]["r"] == ""


def test_compare_on_validation_loss_is_the_paired_t_test_over_seeds(tmp_path, capsys):
    """``--compare A B --metric validation.loss``: a run-level metric has no test items, so the
    test is the paired t over seeds, the same as scipy.stats.ttest_rel on the written values."""
    from scipy import stats

    a_val, b_val = [1.47, 1.44, 1.36], [1.58, 1.52, 1.46]
    for i, (targets, vals) in enumerate((("q,v", a_val), ("q", b_val))):
        for seed, v in zip(SEEDS, vals):
            _write(tmp_path, 3 * i + seed, targets, 4, 3e-4, seed, {"loss": v}, 0.5)
    want = stats.ttest_rel(a_val, b_val)
    diffs = np.subtract(a_val, b_val)
    half = stats.t.ppf(0.975, 2) * diffs.std(ddof=1) / np.sqrt(3)
    code = rep.main([str(tmp_path), "--compare", "targets=q,v", "targets=q",
                     "--metric", "validation.loss"])  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0
    assert "Paired t-test over seeds: validation.loss" in out
    assert f"Δ = {diffs.mean():+.4f}" in out
    assert f"95% CI [{diffs.mean() - half:+.4f}, {diffs.mean() + half:+.4f}]" in out
    assert f"p = {want.pvalue:.4f}" in out

    from lora_jax.report.stats import paired_t

    delta, (lo, hi), p = paired_t(a_val, b_val)
    np.testing.assert_allclose([delta, lo, hi, p],
                               [diffs.mean(), diffs.mean() - half, diffs.mean() + half,
                                want.pvalue], rtol=1e-10)  # fmt: skip


def test_compare_on_validation_loss_needs_the_same_seeds_and_the_metric(tmp_path, capsys):
    for seed in SEEDS:
        _write(tmp_path, seed, "q,v", 4, 3e-4, seed, {"loss": 1.5 + seed / 10}, 0.5)
    for seed in (0, 1):
        _write(tmp_path, 3 + seed, "q", 4, 3e-4, seed, {}, 0.5)
    args = [str(tmp_path), "--compare", "targets=q,v", "targets=q", "--metric"]
    assert rep.main([*args, "validation.loss"]) == 2
    assert "must have run the same seeds; A ran seeds [0, 1, 2], B ran [0, 1]" in (
        capsys.readouterr().err
    )
    assert rep.main([*args[:3], "targets=q seed=0", "--metric", "validation.loss"]) == 2
    assert "A ran seeds [0, 1, 2], B ran [0]" in capsys.readouterr().err
    assert rep.main([*args[:2], "targets=q,v seed=0", "targets=q seed=0", "--metric",
                     "validation.loss"]) == 2  # fmt: skip
    assert "run run-3 has no finite validation.loss" in capsys.readouterr().err
