"""A tiny-model Hydra multirun over two ranks x two target sets x two seeds, plus a run forced
to fail, then the report: the table's shape, counts, means and stds are checked against the
results.json files the runs wrote."""

import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

from tests.models.conftest import write_tiny_hf_model

pytestmark = pytest.mark.torch  # the tiny checkpoint is written by transformers

ROOT = Path(__file__).resolve().parents[2]


def _train(*overrides, cwd):
    cmd = [sys.executable, "-m", "lora_jax.train", "-m", *overrides]
    env = os.environ | {"WANDB_MODE": "disabled", "HYDRA_FULL_ERROR": "1"}
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def multirun(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sweep")
    model = write_tiny_hf_model(tmp / "tiny_gpt2", "gpt2")
    common = [
        "model=local", f"model.source={model}", "task=e2e_sample", "task.options.coco_metrics=false",
        "task.max_len=64", "task.max_train_examples=32", "task.max_eval_items=4",
        "task.decode.max_new_tokens=6", "task.decode.batch_size=4", "trainer.max_steps=3",
        "trainer.log_every=1", "trainer.eval_before=false", "trainer.progress=false",
        "trainer.batch_size=4", "trainer.val_examples=0", "sweep_name=test", f"hydra.sweep.dir={tmp / 'ms'}",
    ]  # fmt: skip
    ok = _train(*common, "lora=q,qv", "lora.r=1,2", "seed=0,1", cwd=ROOT)
    assert ok.returncode == 0, ok.stderr[-3000:]
    bad = _train(
        *common,
        "lora=q",
        "lora.r=1000",
        "seed=0",
        "hydra.sweep.subdir=failed_${hydra.job.num}",
        cwd=ROOT,
    )
    # the failing job ran (results.json below); the sweep then reports it by its exit code
    assert bad.returncode == 1, bad.stderr[-3000:]
    return tmp / "ms"


def test_every_run_wrote_results(multirun):
    results = [json.loads(p.read_text()) for p in multirun.rglob("results.json")]
    assert len(results) == 9
    failed = [r for r in results if r["status"] == "failed"]
    assert len(failed) == 1 and "does not fit" in failed[0]["error"]
    assert {
        (r["sweep"]["targets"], r["sweep"]["r"], r["sweep"]["seed"])
        for r in results
        if r["status"] == "ok"
    } == {(t, r, s) for t in ("q", "q,v") for r in (1, 2) for s in (0, 1)}


def test_report_table_matches_the_runs(multirun, tmp_path):
    out = tmp_path / "report"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "lora_jax.report",
            str(multirun),
            "--metric",
            "bleu",
            "--out",
            str(out),
            "--no-plots",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    import csv

    rows = list(csv.DictReader((out / "report.csv").open()))
    assert len(rows) == 4  # 2 target sets x 2 ranks
    runs = [json.loads(p.read_text()) for p in multirun.rglob("results.json")]
    for row in rows:
        cell = [
            r
            for r in runs
            if r["status"] == "ok"
            and r["sweep"]["targets"] == row["targets"]
            and r["sweep"]["r"] == int(row["r"])
        ]
        vals = (
            [100 * r["metrics"]["eval"]["bleu"] for r in cell]
            if all(r["metrics"]["eval"]["bleu"] <= 1 for r in runs if r["status"] == "ok")
            else [r["metrics"]["eval"]["bleu"] for r in cell]
        )
        assert int(row["n"]) == len(cell) == 2
        assert float(row["mean"]) == pytest.approx(statistics.mean(vals), abs=1e-6)
        assert float(row["std"]) == pytest.approx(statistics.stdev(vals), abs=1e-6)
        assert int(row["trainable"]) == cell[0]["params"]["trainable"]
    md = (out / "report.md").read_text()
    assert "Failed runs" in md and "does not fit" in md
    # q at r=1 on the tiny GPT-2 (d=32, 2 layers): (32 + 32)·1 per layer
    q1 = next(r for r in rows if r["targets"] == "q" and r["r"] == "1")
    assert int(q1["trainable"]) == 2 * 64
