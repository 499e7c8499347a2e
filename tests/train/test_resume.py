"""Kill-and-resume equals uninterrupted: the final LoRA params of a run stopped after k steps
(``trainer.stop_after`` with a corrupted latest checkpoint, kill -9 at random moments and
during checkpoint writes, SIGTERM) and resumed with ``trainer.resume=true`` agree with an
uninterrupted run's to 1e-6 (CPU).

The configuration exercises every piece of resumable state: LoRA dropout (per-step rng),
warmup + linear decay (optimizer step count), gradient accumulation (stopped mid-accumulation:
k is odd), and the data position (batches are a function of (seed, step))."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from tests.train.app import (
    ROOT,
    load_final_lora,
    read_results,
    run_app,
    run_in_process,
    tiny_overrides,
)
from tests.train.test_checkpoints import _truncate

N = 40


def _overrides(model_dir, *extra):
    return tiny_overrides(
        model_dir, "lora.dropout=0.1", "data.packing=true", "optim.grad_accum=2",
        "optim.warmup_steps=4",
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


def _ckpt_files(run_dir) -> dict:
    d = run_dir / "checkpoints"
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def test_stop_after_then_resume_equals_uninterrupted(uninterrupted, tiny_e2e_gpt2_dir, tmp_path):
    """Stopped at 15 with checkpoints 5, 10, 15; step 15 then truncated on disk. The resume
    skips it (saying why), continues from 10 and ends equal to the uninterrupted run, with the
    whole loss record. Refused on the way: a new run in the dir, a resume with another config;
    then resuming the finished run is a no-op that keeps results.json."""
    from lora_jax.train.checkpoint import CheckpointError

    ref_dir, ref = uninterrupted
    ov = _overrides(tiny_e2e_gpt2_dir)
    first = run_in_process([*ov, "trainer.stop_after=15", "trainer.ckpt_every=5",
                            "trainer.ckpt_keep=3"], tmp_path)  # fmt: skip
    assert first["run"]["stopped_at"] == 15 and first["metrics"]["train"]["steps"] == 15
    partial = load_final_lora(tmp_path, tiny_e2e_gpt2_dir, ov)
    assert not all(np.allclose(partial[k], ref[k], atol=1e-6) for k in ref)

    files, record = _ckpt_files(tmp_path), (tmp_path / "results.json").read_bytes()
    with pytest.raises(CheckpointError, match=r"already holds checkpoints \(steps \[5, 10, 15\]\)"):
        run_in_process(ov, tmp_path)
    with pytest.raises(CheckpointError, match=r"(?s)another configuration.*lora\.alpha.*seed"):
        run_in_process([*ov, "trainer.resume=true", "lora.alpha=16", "seed=1"], tmp_path)
    assert _ckpt_files(tmp_path) == files and (tmp_path / "results.json").read_bytes() == record

    _truncate(tmp_path / "checkpoints" / "15")
    second = run_in_process([*ov, "trainer.resume=true"], tmp_path)
    assert second["status"] == "ok" and second["metrics"]["train"]["steps"] == N
    assert second["run"]["resumed_at"] == 10
    assert (tmp_path / "checkpoints.skipped" / "15").is_dir()
    _assert_same(ref, load_final_lora(tmp_path, tiny_e2e_gpt2_dir, ov))
    # The record keeps the earlier part's losses (from the checkpoint's meta), and every logged
    # loss is the uninterrupted run's.
    ref_train = read_results(ref_dir)["metrics"]["train"]
    ref_losses = dict(map(tuple, ref_train["losses"]))
    got = second["metrics"]["train"]["losses"]
    assert [s for s, _ in got] == sorted(ref_losses) == list(range(1, N + 1))
    for step, loss in got:
        assert loss == pytest.approx(ref_losses[step], abs=1e-5), step
    assert second["metrics"]["train"]["first_loss"] == pytest.approx(ref_train["first_loss"])
    assert second["metrics"]["eval"]["bleu"] == pytest.approx(
        read_results(ref_dir)["metrics"]["eval"]["bleu"]
    )
    # Resuming the finished run changes nothing.
    record = (tmp_path / "results.json").read_bytes()
    again = run_in_process([*ov, "trainer.resume=true"], tmp_path)
    assert again["status"] == "ok" and again["metrics"] == second["metrics"]
    assert (tmp_path / "results.json").read_bytes() == record


def _start(ov, run_dir, *extra):
    return subprocess.Popen(
        [sys.executable, "-m", "lora_jax.train", *ov, f"hydra.run.dir={run_dir}", *extra],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
    )  # fmt: skip


def _steps(ckpts) -> list[int]:
    return (
        sorted(int(p.name) for p in ckpts.iterdir() if p.name.isdigit()) if ckpts.is_dir() else []
    )


def _writing(ckpts) -> bool:
    return ckpts.is_dir() and any("tmp" in p.name for p in ckpts.iterdir())


def _kill_at(proc, ckpts, moment: str, advance: int, delay: float) -> bool:
    """SIGKILL ``proc`` once it checkpointed ``advance`` more steps: during its next checkpoint
    write (``moment="write"``) or ``delay`` s later (``"random"``). Whether it was killed."""
    first, deadline = (_steps(ckpts) or [0])[-1], time.time() + 150
    try:
        while time.time() < deadline and proc.poll() is None:
            if (_steps(ckpts) or [0])[-1] >= first + advance:
                if moment == "random":
                    time.sleep(delay)
                    proc.send_signal(signal.SIGKILL)
                    break
                if _writing(ckpts):
                    proc.send_signal(signal.SIGKILL)
                    break
            time.sleep(0.001)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    return proc.returncode == -signal.SIGKILL


def test_sigkill_at_random_moments_then_resume(uninterrupted, tiny_e2e_gpt2_dir, tmp_path):
    """Three kill -9s (during a checkpoint write, at a random moment, during a write again),
    each followed by a resume; the final weights equal the uninterrupted run's."""
    _, ref = uninterrupted
    ov = _overrides(tiny_e2e_gpt2_dir, "trainer.ckpt_every=1", "trainer.ckpt_keep=1")
    ckpts = tmp_path / "checkpoints"
    rng = random.Random(0)
    kills = []
    for i, moment in enumerate(["write", "random", "write"]):
        proc = _start(ov, tmp_path, *(["trainer.resume=true"] if i else []))
        if _kill_at(proc, ckpts, moment, rng.randint(1, 8), rng.uniform(0.0, 0.5)):
            kills.append((moment, _steps(ckpts)))
        elif proc.returncode != 0:
            pytest.fail(f"run {i} failed (rc {proc.returncode}): {proc.stderr.read()[-2000:]}")
    assert len(kills) >= 2 and kills[0][0] == "write", kills
    assert all(steps[-1] < N for _, steps in kills), kills
    assert not (tmp_path / "results.json").exists() or read_results(tmp_path)["status"] != "ok"

    res = run_in_process([*ov, "trainer.resume=true"], tmp_path)
    assert res["status"] == "ok" and res["metrics"]["train"]["steps"] == N
    assert res["data"]["packing"] is True  # packed rows (data.packing): the data position too
    _assert_same(ref, load_final_lora(tmp_path, tiny_e2e_gpt2_dir, ov))


def test_sigterm_checkpoints_then_resume(uninterrupted, tiny_e2e_gpt2_dir, tmp_path):
    """SIGTERM (SLURM's preemption signal): the run checkpoints at the next step boundary,
    writes results.json with status "preempted", exits 143; the resume equals uninterrupted."""
    ref_dir, ref = uninterrupted
    ov = _overrides(tiny_e2e_gpt2_dir, "trainer.ckpt_every=4")
    proc = _start(ov, tmp_path)
    ckpts, deadline = tmp_path / "checkpoints", time.time() + 150
    try:
        while time.time() < deadline and proc.poll() is None and not _steps(ckpts):
            time.sleep(0.01)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143, proc.stderr.read()[-2000:]
    rec = read_results(tmp_path)
    stopped = rec["run"]["stopped_at"]
    assert rec["status"] == "preempted" and "trainer.resume=true" in rec["error"]
    assert 0 < stopped < N and _steps(ckpts)[-1] == stopped

    # A new run started on this dir by mistake is refused before Hydra writes into it.
    kept = {p: (tmp_path / p).read_bytes() for p in (".hydra/config.yaml", "results.json")}
    proc = run_app([*ov, f"hydra.run.dir={tmp_path}", "seed=5"], timeout=120)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1 and "already holds checkpoints" in out and "Traceback" not in out
    assert {p: (tmp_path / p).read_bytes() for p in kept} == kept

    # Resumed by its run dir alone: the saved config, no original override repeated.
    proc = run_app([f"resume_from={tmp_path}"], timeout=180)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    res = read_results(tmp_path)
    assert res["status"] == "ok" and res["run"]["resumed_at"] == stopped
    _assert_same(ref, load_final_lora(tmp_path, tiny_e2e_gpt2_dir, ov))
    ref_losses = read_results(ref_dir)["metrics"]["train"]["losses"]
    assert [s for s, _ in res["metrics"]["train"]["losses"]] == [s for s, _ in ref_losses]
