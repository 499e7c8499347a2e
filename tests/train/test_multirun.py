"""A failing run does not stop a sweep, but the sweep reports it: ``-m lora.r=10000,1`` on the
tiny model (d=32, so r=10000 cannot fit) runs both jobs (the failing one first), both job dirs
hold results.json with the right status, and the app exits 1, naming the failed job."""

from __future__ import annotations

from tests.train.app import read_results, run_app, tiny_overrides


def test_failing_run_does_not_stop_the_sweep(tiny_e2e_gpt2_dir, tmp_path):
    args = tiny_overrides(
        tiny_e2e_gpt2_dir, "trainer.max_steps=2", "trainer.eval_before=false",
        "task.max_eval_items=1", "task.decode.max_new_tokens=2",
    )  # fmt: skip
    proc = run_app(["-m", *args, "lora.r=10000,1", f"hydra.sweep.dir={tmp_path}"])
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    failed, ok = read_results(tmp_path / "0"), read_results(tmp_path / "1")
    assert failed["status"] == "failed" and failed["sweep"]["r"] == 10000
    assert "r=10000" in failed["error"] and failed["traceback"]
    assert ok["status"] == "ok" and ok["sweep"]["r"] == 1
    assert ok["metrics"]["train"]["steps"] == 2 and "bleu" in ok["metrics"]["eval"]
    out = (proc.stdout + proc.stderr).replace("\n", "")  # rich wraps long lines
    assert "1 run(s) did not finish ok" in out and str(tmp_path / "0") in out
