"""A failing run does not stop a sweep: ``-m lora.r=1,10000`` on the tiny model (d=32, so r=10000
cannot fit) exits 0 and both job dirs hold results.json with the right status."""

from __future__ import annotations

from tests.train.app import read_results, run_app, tiny_overrides


def test_failing_run_does_not_stop_the_sweep(tiny_e2e_gpt2_dir, tmp_path):
    args = tiny_overrides(
        tiny_e2e_gpt2_dir, "trainer.max_steps=2", "trainer.eval_before=false",
        "task.max_eval_items=1", "task.decode.max_new_tokens=2",
    )  # fmt: skip
    proc = run_app(["-m", *args, "lora.r=10000,1", f"hydra.sweep.dir={tmp_path}"])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    failed, ok = read_results(tmp_path / "0"), read_results(tmp_path / "1")
    assert failed["status"] == "failed" and failed["sweep"]["r"] == 10000
    assert "r=10000" in failed["error"] and failed["traceback"]
    assert ok["status"] == "ok" and ok["sweep"]["r"] == 1
    assert ok["metrics"]["train"]["steps"] == 2 and "bleu" in ok["metrics"]["eval"]
    assert "failed" in proc.stdout + proc.stderr
