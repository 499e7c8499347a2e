"""``+sweep=rank_table hydra/launcher=packed`` on the tiny GPT-2: one pack of 8 jobs (q,v / all ×
r ∈ {1, 4} × two learning rates, one of them diverging), one results.json per job, the report
reads them like an ordinary multirun, a packed job equals the same job run alone (metrics,
predictions and adapter, fp32 CPU), and the diverging jobs' records say why."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lora_jax import report
from tests.train.app import load_final_lora, read_results, run_app, run_in_process, tiny_overrides

SWEEP = ["lora=qv,all", "lora.r=1,4", "optim.lr=2e-3,1e30", "seed=1"]


def _common(model_dir, out):
    return tiny_overrides(
        model_dir, "trainer.max_steps=4", "trainer.batch_size=4", "trainer.eval_before=false",
        "trainer.data_seed=0", "task.decode.batch_size=4", "sweep_name=packed",
    ) + [f"hydra.sweep.dir={out}"]  # fmt: skip


@pytest.fixture(scope="module")
def packed_sweep(tiny_e2e_gpt2_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("packed") / "ms"
    proc = run_app(
        ["-m", "+sweep=rank_table", "experiment=demo", "hydra/launcher=packed", "hydra.launcher.rank_bands=[]",
         *_common(tiny_e2e_gpt2_dir, out), *SWEEP],
        env={"JAX_DEFAULT_MATMUL_PRECISION": "highest", "WANDB_MODE": "disabled"},
        timeout=600,
    )  # fmt: skip
    # 4 diverging jobs: the sweep finishes, then exits 1 as a solo multirun with failures does
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "4 run(s) did not finish ok" in proc.stdout + proc.stderr
    assert "in 1 packs" in proc.stdout + proc.stderr
    return out


def test_every_job_has_its_record_and_the_report_reads_them(packed_sweep, tmp_path):
    runs = {p.parent.name: json.loads(p.read_text()) for p in packed_sweep.rglob("results.json")}
    assert len(runs) == 8
    ok = [r for r in runs.values() if r["status"] == "ok"]
    failed = [r for r in runs.values() if r["status"] == "failed"]
    assert {(r["config"]["lora"]["targets"], r["sweep"]["r"]) for r in ok} == {
        (t, r) for t in ("qv", "all") for r in (1, 4)
    }
    assert all(r["config"]["optim"]["lr"] == 2e-3 for r in ok)
    assert len(failed) == 4 and all("NonFiniteLoss" in r["error"] for r in failed)
    assert all(r["run"]["pack"]["size"] == 8 for r in runs.values())
    assert all(
        (packed_sweep / d / "predictions_eval.txt").exists()
        for d, r in runs.items()
        if r["status"] == "ok"
    )
    assert all((packed_sweep / d / ".hydra" / "overrides.yaml").exists() for d in runs)

    assert (
        report.main([str(packed_sweep), "--metric", "bleu", "--out", str(tmp_path), "--no-plots"])
        == 0
    )
    import csv

    rows = list(csv.DictReader((tmp_path / "report.csv").open()))
    assert len(rows) == 4 and all(int(r["n"]) == 1 for r in rows)
    for row in rows:
        (run,) = [
            r
            for r in ok
            if r["sweep"]["targets"] == row["targets"] and r["sweep"]["r"] == int(row["r"])
        ]
        assert int(row["trainable"]) == run["params"]["trainable"]
    assert "Failed runs" in (tmp_path / "report.md").read_text()


def test_a_packed_job_equals_its_solo_run(packed_sweep, tiny_e2e_gpt2_dir, tmp_path):
    import jax

    (packed_dir,) = [p.parent for p in packed_sweep.rglob("results.json")
                     if (r := json.loads(p.read_text()))["status"] == "ok"
                     and r["config"]["lora"]["targets"] == "all" and r["sweep"]["r"] == 4]  # fmt: skip
    job = _common(tiny_e2e_gpt2_dir, tmp_path)[:-1] + ["lora=all", "lora.r=4", "lora.alpha=16",
                                                        "optim.lr=2e-3", "seed=1"]  # fmt: skip
    with jax.default_matmul_precision("highest"):
        solo = run_in_process(job, tmp_path / "solo")
    packed = read_results(packed_dir)
    assert solo["status"] == "ok"
    assert packed["params"] == solo["params"]
    pe, se = packed["metrics"]["eval"], solo["metrics"]["eval"]
    assert pe.keys() == se.keys()
    for k in se:
        assert pe[k] == (pytest.approx(se[k], rel=1e-5) if isinstance(se[k], float) else se[k]), k
    pl, sl = packed["metrics"]["train"]["losses"], solo["metrics"]["train"]["losses"]
    assert [s for s, _ in pl] == [s for s, _ in sl]
    assert [v for _, v in pl] == pytest.approx([v for _, v in sl], rel=1e-5)
    assert (packed_dir / "predictions_eval.txt").read_text() == (
        tmp_path / "solo" / "predictions_eval.txt"
    ).read_text()
    got = load_final_lora(packed_dir, tiny_e2e_gpt2_dir, job)
    want = load_final_lora(tmp_path / "solo", tiny_e2e_gpt2_dir, job)
    assert got.keys() == want.keys()
    for k in want:
        np.testing.assert_allclose(
            got[k], want[k], rtol=0, atol=1e-4 * max(np.abs(want[k]).max(), 1e-3), err_msg=k
        )


def test_evaluate_cli_scores_saved_adapters_like_their_runs(packed_sweep, tmp_path):
    from lora_jax.run.evaluate import main

    ok = sorted(
        p.parent
        for p in packed_sweep.rglob("results.json")
        if read_results(p.parent)["status"] == "ok"
    )
    out = tmp_path / "eval.json"
    assert main(["--adapters", *map(str, ok), "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    for d, r in zip(ok, res):
        assert [h.replace("\n", " ") for h in r["predictions"]] == (
            d / "predictions_eval.txt"
        ).read_text().splitlines()
        assert r["metrics"] == read_results(d)["metrics"]["eval"]
    assert main(["--adapters", str(tmp_path)]) == 2  # not a run dir: a clear error
