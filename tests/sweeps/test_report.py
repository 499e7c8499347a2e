"""lora_jax.report on fake Hydra multirun dirs: the expected numbers are recomputed here with numpy
from the files the test writes, never taken from the report code."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from lora_jax import report as rep

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
ALL = "q,k,v,o,gate,up,down"  # target labels (lora_jax.lora.naming)


def _write_run(
    root: Path,
    idx: int,
    sweep: dict,
    metrics: dict | None,
    trainable: int = 0,
    status: str = "ok",
    error: str | None = None,
    results: bool = True,
) -> Path:
    run_dir = root / str(idx)
    (run_dir / ".hydra").mkdir(parents=True)
    overrides = [
        f"lora.targets={sweep['targets']}",
        f"lora.r={sweep['r']}",
        f"seed={sweep['seed']}",
    ]
    (run_dir / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    if results:
        body = {
            "status": status,
            "error": error,
            "run": {"name": f"run-{idx}", "dir": str(run_dir), "wall_time_s": 12.5},
            "config": {"lora": {"r": sweep["r"]}},
            "sweep": {
                "model": "tiny",
                "task": "e2e",
                "alpha": 2.0 * sweep["r"],
                "scaling": "standard",
                **sweep,
            },
            "params": {"trainable": trainable, "base": 10**6, "percent": trainable / 1e4},
            "metrics": metrics or {},
            "main_metric": "bleu",
            "memory": {"peak_bytes": None},
        }
        (run_dir / "results.json").write_text(json.dumps(body))
    return run_dir


@pytest.fixture
def multirun(tmp_path: Path) -> Path:
    """2 target sets x 2 ranks x 2 seeds (written out of display order), 1 failed, 1 crashed."""
    root = tmp_path / "multirun" / "2025-01-01" / "12-00-00"
    rng = np.random.default_rng(0)
    idx = 0
    for targets in (ALL, "q,v"):
        for r in (8, 2):
            for seed in (0, 1):
                metrics = {
                    "eval": {
                        "bleu": float(rng.uniform(0.6, 0.72)),
                        "nist": float(rng.uniform(8.0, 9.0)),
                        "rouge_l": float(rng.uniform(0.65, 0.75)),
                    },
                    "train": {
                        "first_loss": 5.0,
                        "final_loss": float(rng.uniform(1, 2)),
                        "steps": 10,
                    },
                }
                trainable = 2 * 4 * 64 * r * (4 if targets == ALL else 2)
                _write_run(
                    root, idx, {"targets": targets, "r": r, "seed": seed}, metrics, trainable
                )
                idx += 1
    _write_run(
        root,
        idx,
        {"targets": "q", "r": 4, "seed": 0},
        None,
        status="failed",
        error="RESOURCE_EXHAUSTED: out of memory",
    )
    _write_run(root, idx + 1, {"targets": "k", "r": 16, "seed": 1}, None, results=False)
    return root


def _expected(root: Path, metric: str) -> dict[tuple[str, int], tuple[int, float, float, int]]:
    """(targets, r) -> (n, mean, std ddof=1, trainable), read straight from the results files."""
    groups: dict[tuple[str, int], list[dict]] = {}
    for path in root.glob("*/results.json"):
        res = json.loads(path.read_text())
        if res["status"] == "ok":
            groups.setdefault((res["sweep"]["targets"], res["sweep"]["r"]), []).append(res)
    out = {}
    for key, runs in groups.items():
        values = np.array([r["metrics"]["eval"][metric] for r in runs])
        out[key] = (len(runs), values.mean(), values.std(ddof=1), runs[0]["params"]["trainable"])
    return out


def test_table_shape_means_stds(multirun: Path) -> None:
    report = rep.aggregate(rep.collect_runs(multirun), "bleu")
    assert len(report.sections) == 1  # alpha = 2r is fixed by the cell, so it does not split
    section = report.sections[0]
    assert section.rows == ["q,v", ALL]  # attention before MLP, not file order
    assert section.cols == [2, 8]  # numeric order
    expected = _expected(multirun, "bleu")
    assert set(section.cells) == set(expected) and len(expected) == 4
    for key, (n, mean, std, trainable) in expected.items():
        cell = section.cells[key]
        assert cell.n == n == 2
        assert cell.mean == pytest.approx(100 * mean, rel=1e-12)  # BLEU fraction shown x100
        assert cell.std == pytest.approx(100 * std, rel=1e-12)
        assert cell.trainable == trainable
    nist = _expected(multirun, "nist")
    for key, (_, mean, std, _) in nist.items():  # NIST is shown as stored
        assert section.cells[key].stats["eval.nist"][0] == pytest.approx(mean, rel=1e-12)
        assert section.cells[key].stats["eval.nist"][1] == pytest.approx(std, rel=1e-12)
    failed = {r.name: r.error for r in report.failed}
    assert failed["run-8"] == "RESOURCE_EXHAUSTED: out of memory"
    crashed = [r for r in report.failed if r.name.endswith("9")]
    assert len(crashed) == 1 and "no results.json" in crashed[0].error
    assert crashed[0].sweep == {"targets": "k", "r": 16, "seed": 1}  # axes from the overrides


def test_cli_writes_every_file(multirun: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    assert rep.main([str(multirun), "--metric", "bleu", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    md = (out / "report.md").read_text()
    assert md in printed

    expected = _expected(multirun, "bleu")
    n, mean, std, trainable = expected[("q,v", 2)]
    qv_line = next(line for line in md.splitlines() if line.startswith("| q,v "))
    # mean ± the 95% Student-t half-width over the n seeds (scipy's quantile), then n
    from scipy.stats import t as student_t

    half = student_t.ppf(0.975, n - 1) * 100 * std / np.sqrt(n)
    assert f"{100 * mean:.1f} ± {half:.1f} (n={n}, {trainable / 1e3:.1f}K)" in qv_line
    assert md.startswith("# Sweep report: bleu (×100) by targets × r, init: unknown")  # no config
    assert "Failed runs (2" in md and "run-8" in md and "out of memory" in md
    assert "no results.json" in md
    assert "Seeds per cell: 2" in md and "Best cell" in md
    best = max(expected, key=lambda k: expected[k][1])
    assert f"targets={best[0]}, r={best[1]}" in md

    with (out / "report.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4
    for row in rows:
        n, mean, std, trainable = expected[(row["targets"], int(row["r"]))]
        assert int(row["n"]) == n and int(row["trainable"]) == trainable
        assert float(row["mean"]) == pytest.approx(100 * mean)
        assert float(row["std"]) == pytest.approx(100 * std)
        assert float(row["eval.bleu_mean"]) == pytest.approx(100 * mean)
        assert "eval.rouge_l_mean" in row and "train.final_loss_std" in row

    with (out / "runs.csv").open() as f:
        runs = list(csv.DictReader(f))
    assert len(runs) == 10
    assert sum(r["status"] == "failed" for r in runs) == 2

    tex = (out / "report.tex").read_text()
    for token in ("\\begin{tabular}{lcc}", "\\toprule", "\\midrule", "\\bottomrule", "$\\pm$"):
        assert token in tex
    assert tex.count("\\\\") == 3  # header + 2 target rows

    pngs = sorted(out.glob("*.png"))
    assert [p.name for p in pngs] == ["bleu_vs_params.png", "bleu_vs_r.png"]
    import matplotlib.image

    for png in pngs:
        assert png.read_bytes()[:8] == PNG_MAGIC
        assert matplotlib.image.imread(png).shape[0] > 100


def test_module_entry_point_exit_code(multirun: Path, tmp_path: Path) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "lora_jax.report",
            str(multirun),
            "--out",
            str(tmp_path / "o"),
            "--no-plots",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "| targets" in proc.stdout  # default metric = the runs' main_metric (bleu)


def test_no_runs_is_a_clear_error(tmp_path: Path, capsys) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(rep.ReportError, match="no runs under"):
        rep.collect_runs(tmp_path / "empty")
    assert rep.main([str(tmp_path / "empty")]) == 2
    assert "multirun" in capsys.readouterr().err
    with pytest.raises(rep.ReportError, match="not a directory"):
        rep.collect_runs(tmp_path / "missing")


def test_unknown_metric_is_a_clear_error(multirun: Path) -> None:
    with pytest.raises(rep.ReportError, match="'eval.blue'.*--metric"):
        rep.aggregate(rep.collect_runs(multirun), "blue")


def test_single_seed_equal_budget_and_percent_rule(tmp_path: Path) -> None:
    """Paper Table 5 style: a different r per target set, one seed each."""
    budget = {"q": 8, "v": 8, "qv": 4, "attn": 2}
    values = {"q": 0.704, "v": 0.73, "qv": 0.737, "attn": 0.737}
    for i, (targets, r) in enumerate(budget.items()):
        metrics = {"eval": {"bleu": values[targets], "cider": 2.5 + i / 10}}
        _write_run(tmp_path, i, {"targets": targets, "r": r, "seed": 0}, metrics, 18 * 10**6)
    report = rep.aggregate(rep.collect_runs(tmp_path), "bleu")
    section = report.sections[0]
    # legacy preset names in old records become labels, in the paper's order
    assert section.rows == ["q", "v", "q,v", "q,k,v,o"] and section.cols == [2, 4, 8]
    assert all(c.std is None for c in section.cells.values())
    md = rep.render_markdown(report)
    assert "±" not in md.split("Best cell")[0].split("— = not run.")[1]  # n=1: no ± in cells
    assert "- q,v@r=4: 73.7 (n=1, 18.00M)" in md  # the compact list of a sparse table
    assert "—" in md  # empty cells
    cider = rep.aggregate(rep.collect_runs(tmp_path), "cider")
    assert cider.scales["eval.cider"] == 1.0  # CIDEr shown as stored
    assert cider.sections[0].cells[("q,k,v,o", 2)].mean == pytest.approx(2.8)


def test_axis_varying_inside_a_cell_splits_the_report(tmp_path: Path) -> None:
    for i, (alpha, bleu) in enumerate([(8, 0.5), (8, 0.6), (32, 0.7), (32, 0.9)]):
        sweep = {"targets": "qv", "r": 4, "seed": i % 2}
        run_dir = _write_run(tmp_path, i, sweep, {"eval": {"bleu": bleu}}, 100)
        res = json.loads((run_dir / "results.json").read_text())
        res["sweep"]["alpha"] = alpha
        (run_dir / "results.json").write_text(json.dumps(res))
    report = rep.aggregate(rep.collect_runs(tmp_path), "bleu")
    assert [s.fixed for s in report.sections] == [{"alpha": 8}, {"alpha": 32}]
    assert report.sections[1].cells[("q,v", 4)].mean == pytest.approx(80.0)
    assert report.sections[1].cells[("q,v", 4)].std == pytest.approx(np.std([70, 90], ddof=1))
    paths = rep.write_report(report, tmp_path / "out")
    assert "bleu_vs_r_alpha-32.png" in paths


def test_parse_overrides() -> None:
    got = rep.parse_overrides(["lora.r=4", "+seed=1", "lora.targets=[q,v]", "model=gpt2", "x"])
    assert got == {"r": 4, "seed": 1, "targets": "q,v", "model": "gpt2"}


class _FakeRun:
    def __init__(self, name: str, state: str, summary: dict, config: dict) -> None:
        self.name, self.state, self.summary_metrics, self.config = name, state, summary, config


class _FakeApi:
    calls: list = []

    def runs(self, path: str, filters: dict | None = None) -> list[_FakeRun]:
        self.calls.append((path, filters))
        runs = []
        for i, (targets, r, seed, bleu) in enumerate(
            [("qv", 4, 0, 0.70), ("qv", 4, 1, 0.72), ("q", 4, 0, 0.68)]
        ):
            summary = {  # flattened keys, as wandb.summary.update of a flat dict would give
                "status": "ok",
                "main_metric": "bleu",
                "_step": 10,
                "params/trainable": 1024,
                "metrics/eval/bleu": bleu,
                "metrics/train/final_loss": 1.5,
            }
            if i == 0:  # axes in the summary for one run, in the config for the others
                summary |= {"sweep": {"targets": targets, "r": r, "seed": seed}}
            config = {"lora": {"targets": targets, "r": r, "alpha": 8}, "seed": seed}
            runs.append(_FakeRun(f"w{i}", "finished", summary, config))
        runs.append(_FakeRun("w-crash", "crashed", {"_step": 3}, {"lora": {"r": 8}}))
        return runs


def test_wandb_source(monkeypatch, tmp_path: Path, capsys) -> None:
    import wandb

    monkeypatch.setattr(wandb, "Api", _FakeApi)
    out = tmp_path / "wb"
    assert rep.main(["--wandb", "me/lora", "--group", "rank_table", "--out", str(out)]) == 0
    assert _FakeApi.calls[-1] == ("me/lora", {"group": "rank_table"})
    with (out / "report.csv").open() as f:
        rows = {(r["targets"], r["r"]): r for r in csv.DictReader(f)}
    assert set(rows) == {("q", "4"), ("q,v", "4")}
    assert float(rows[("q,v", "4")]["mean"]) == pytest.approx(71.0)
    assert float(rows[("q,v", "4")]["std"]) == pytest.approx(np.std([70, 72], ddof=1))
    md = (out / "report.md").read_text()
    assert "w-crash" in md and "crashed" in md


def test_nan_metric_is_excluded_and_listed(tmp_path: Path) -> None:
    for seed, bleu in enumerate([0.5, 0.7, float("nan")]):
        _write_run(tmp_path, seed, {"targets": "q", "r": 1, "seed": seed}, {"eval": {"bleu": bleu}})
    report = rep.aggregate(rep.collect_runs(tmp_path), "bleu")
    cell = report.sections[0].cells[("q", 1)]
    assert cell.n == 2 and cell.mean == pytest.approx(60.0)
    assert [r.name for r in report.failed] == ["run-2"] and "nan" in report.failed[0].error


def _set(run_dir: Path, **updates) -> None:
    res = json.loads((run_dir / "results.json").read_text())
    for path, value in updates.items():
        node = res
        *parents, leaf = path.split("__")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    (run_dir / "results.json").write_text(json.dumps(res))


def test_cell_with_runs_at_another_lr_is_refused_or_listed(tmp_path: Path, capsys) -> None:
    """Seeds 0-2 of one cell, seed 2 at another lr (a leaked value): refused, naming the key,
    the values and the runs; --allow-mixed averages and lists it."""
    for seed, lr in enumerate([2e-4, 2e-4, 1e-3]):
        d = _write_run(tmp_path, seed, {"targets": "q,v", "r": 4, "seed": seed},
                       {"eval": {"bleu": 0.6 + seed / 100}})  # fmt: skip
        _set(d, config={"lora": {"r": 4}, "optim": {"lr": lr}, "seed": seed, "name": f"n{seed}"})
    runs = rep.collect_runs(tmp_path)
    with pytest.raises(
        rep.ReportError, match=r"optim\.lr: 0\.0002 \(run-0, run-1\); 0\.001 \(run-2\)"
    ):
        rep.aggregate(runs, "bleu")
    assert rep.main([str(tmp_path), "--no-plots", "--out", str(tmp_path / "o")]) == 2
    assert "optim.lr" in capsys.readouterr().err
    report = rep.aggregate(runs, "bleu", allow_mixed=True)
    assert report.sections[0].cells[("q,v", 4)].n == 3
    md = rep.render_markdown(report)
    assert "differ beyond the seed" in md and "optim.lr" in md and "run-2" in md
    # seed and run name differ too, as they must: not listed
    assert "seed:" not in md.split("differ beyond the seed")[1] and "name:" not in md


def test_compare_paired_bootstrap_cli(tmp_path: Path, capsys) -> None:
    """Two configurations x 2 seeds with per-item predictions: --compare prints Δ (A − B) equal
    to the mean over seeds of sacrebleu's corpus BLEU, its interval and p-value."""
    import re

    import sacrebleu

    refs = [[f"item {i} has a reference text", f"the reference of item {i}"] for i in range(12)]
    hyps = {
        "up,down": [f"item {i} has a reference text" for i in range(12)],
        "q,k,v,o": [f"item {i} has text" if i % 2 else f"the item {i}" for i in range(12)],
    }
    idx, bleu = 0, {}
    for targets, base in hyps.items():
        for seed in (0, 1):
            out = [h if i != seed else h + " extra" for i, h in enumerate(base)]  # seeds differ
            streams = [[r[j] for r in refs] for j in range(2)]
            bleu[(targets, seed)] = sacrebleu.corpus_bleu(out, streams).score
            d = _write_run(tmp_path, idx, {"targets": targets, "r": 2, "seed": seed},
                           {"eval": {"bleu": 0.5}})  # fmt: skip
            _set(d, items="items_eval.jsonl")
            with (d / "items_eval.jsonl").open("w") as f:
                for h, r in zip(out, refs):
                    f.write(json.dumps({"hyp": h, "refs": r}) + "\n")
            idx += 1
    args = [str(tmp_path), "--compare", "targets=up,down r=2", "targets=q,k,v,o r=2"]
    assert rep.main([*args, "--n-boot", "2000"]) == 0
    out = capsys.readouterr().out
    expected = np.mean([bleu[("up,down", s)] for s in (0, 1)]) - np.mean(
        [bleu[("q,k,v,o", s)] for s in (0, 1)]
    )
    m = re.search(r"Δ = ([-+.\d]+), 95% CI \[([-+.\d]+), ([-+.\d]+)\], p = ([.\d]+)", out)
    assert m, out
    delta, lo, hi, p = map(float, m.groups())
    assert delta == pytest.approx(expected, abs=1e-3)
    assert 0 < lo < delta < hi and p < 0.01  # A is better on most items
    assert "paired by seed" in out and "12 test items" in out
    # a spec that selects nothing names the values present
    assert rep.main([str(tmp_path), "--compare", "targets=q,v", "targets=up,down"]) == 2
    assert "selects no successful run" in capsys.readouterr().err


def test_header_names_the_init_of_the_runs(tmp_path: Path) -> None:
    """The title carries config lora.init: the one name when the runs agree, "mixed" when they
    differ (then each table heading gives its own), "unknown" without configs (above)."""
    for i, (targets, init) in enumerate([("q", "kaiming"), ("q,v", "kaiming")]):
        d = _write_run(tmp_path / "same", i, {"targets": targets, "r": 4, "seed": 0},
                       {"eval": {"bleu": 0.6}})  # fmt: skip
        _set(d, config={"lora": {"r": 4, "init": init}, "seed": 0})
    md = rep.render_markdown(rep.aggregate(rep.collect_runs(tmp_path / "same"), "bleu"))
    assert md.splitlines()[0] == "# Sweep report: bleu (×100) by targets × r, init: kaiming"
    for i, (alpha, init) in enumerate([(8, "kaiming"), (32, "gaussian")]):
        d = _write_run(tmp_path / "mixed", i, {"targets": "q", "r": 4, "seed": 0},
                       {"eval": {"bleu": 0.6}})  # fmt: skip
        _set(d, sweep__alpha=alpha, config={"lora": {"r": 4, "init": init}, "seed": 0})
    report = rep.aggregate(rep.collect_runs(tmp_path / "mixed"), "bleu")
    md = rep.render_markdown(report)
    assert report.init == "mixed" and md.splitlines()[0].endswith(", init: mixed")
    assert "## alpha=8, init: kaiming" in md and "## alpha=32, init: gaussian" in md
    assert "init: mixed" in rep.render_latex(report)
    # rows that each have one init (a variants table: rows = variant): the heading lists them
    for i, (variant, init) in enumerate([("lora", "kaiming"), ("pissa", "pissa")]):
        d = _write_run(tmp_path / "rows", i, {"targets": "q,v", "r": 8, "seed": 0},
                       {"eval": {"bleu": 0.6}})  # fmt: skip
        _set(d, sweep__variant=variant, config={"lora": {"r": 8, "init": init}, "seed": 0})
    md = rep.render_markdown(
        rep.aggregate(rep.collect_runs(tmp_path / "rows"), "bleu", rows="variant")
    )
    assert "## init: per row (lora: kaiming, pissa: pissa)" in md
