"""Kill-and-resume equals uninterrupted: the final LoRA params of a run stopped after k steps
(``trainer.stop_after``, or a real SIGKILL after a periodic checkpoint) and resumed with
``trainer.resume=true`` agree with an uninterrupted run's to 1e-6 (CPU).

The configuration exercises every piece of resumable state: LoRA dropout (per-step rng),
warmup + linear decay (optimizer step count), gradient accumulation (stopped mid-accumulation:
k is odd), and the data position (batches are a function of (seed, step))."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from tests.train.app import ROOT, load_final_lora, read_results, run_in_process, tiny_overrides

N = 40


def _overrides(model_dir, *extra):
    return tiny_overrides(
        model_dir, "lora.dropout=0.1", "optim.grad_accum=2", "optim.warmup_steps=4",
        "optim.lr=1e-2", f"trainer.max_steps={N}", "trainer.log_every=1",
        "trainer.eval_before=false", "task.max_eval_items=1", "task.decode.max_new_tokens=2",
        *extra,
    )  # fmt: skip


@pytest.fixture(scope="module")
def uninterrupted(tiny_e2e_gpt2_dir, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("uninterrupted")
    ov = _overrides(tiny_e2e_gpt2_dir)
    res = run_in_process(ov, run_dir)
    assert res["status"] == "ok" and res["metrics"]["train"]["steps"] == N
    return run_dir, load_final_lora(run_dir, tiny_e2e_gpt2_dir, ov)


def _assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_allclose(b[k], a[k], rtol=0, atol=1e-6, err_msg=k)
    assert any(np.abs(v).max() > 1e-3 for v in a.values())  # trained, not the zero-B init


def test_stop_after_then_resume_equals_uninterrupted(uninterrupted, tiny_e2e_gpt2_dir, tmp_path):
    ref_dir, ref = uninterrupted
    ov = _overrides(tiny_e2e_gpt2_dir)
    first = run_in_process([*ov, "trainer.stop_after=15"], tmp_path)
    assert first["run"]["stopped_at"] == 15 and first["metrics"]["train"]["steps"] == 15
    partial = load_final_lora(tmp_path, tiny_e2e_gpt2_dir, ov)
    assert not all(np.allclose(partial[k], ref[k], atol=1e-6) for k in ref)

    second = run_in_process([*ov, "trainer.resume=true"], tmp_path)
    assert second["status"] == "ok" and second["metrics"]["train"]["steps"] == N
    _assert_same(ref, load_final_lora(tmp_path, tiny_e2e_gpt2_dir, ov))
    # The logged losses after the resume point are the uninterrupted run's.
    ref_losses = dict(map(tuple, read_results(ref_dir)["metrics"]["train"]["losses"]))
    for step, loss in second["metrics"]["train"]["losses"]:
        assert step > 15
        assert loss == pytest.approx(ref_losses[step], abs=1e-5), step
    assert second["metrics"]["eval"]["bleu"] == pytest.approx(
        read_results(ref_dir)["metrics"]["eval"]["bleu"]
    )


def test_sigkill_after_checkpoint_then_resume(uninterrupted, tiny_e2e_gpt2_dir, tmp_path):
    _, ref = uninterrupted
    ov = _overrides(tiny_e2e_gpt2_dir, "trainer.ckpt_every=2", "trainer.ckpt_keep=1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "lora_jax.train", *ov, f"hydra.run.dir={tmp_path}"],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    ckpts = tmp_path / "checkpoints"
    deadline = time.time() + 120
    try:
        while time.time() < deadline and proc.poll() is None:
            if ckpts.is_dir() and any(p.name.isdigit() for p in ckpts.iterdir()):
                proc.send_signal(signal.SIGKILL)
                break
            time.sleep(0.02)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    if proc.returncode != -signal.SIGKILL:
        pytest.fail(
            f"the run was not killed mid-way (rc {proc.returncode}): {proc.stderr.read()[-2000:]}"
        )
    steps = sorted(int(p.name) for p in ckpts.iterdir() if p.name.isdigit())
    assert steps and steps[-1] < N, steps
    assert not (tmp_path / "results.json").exists() or read_results(tmp_path)["status"] != "ok"

    res = run_in_process([*ov, "trainer.resume=true"], tmp_path)
    assert res["status"] == "ok" and res["metrics"]["train"]["steps"] == N
    _assert_same(ref, load_final_lora(tmp_path, tiny_e2e_gpt2_dir, ov))
