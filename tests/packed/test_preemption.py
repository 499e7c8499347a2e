"""The guarantees of a run hold for packed jobs from the same code (lora_jax.run.jobs, the one
engine): a bad config is refused before the model loads with the solo run's message, and a
SIGTERM during a pack ends every job "preempted" (exit 143) with its own checkpoint, from which
a rerun of the sweep resumes each job."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from tests.train.app import (
    ROOT,
    compose,
    read_results,
    run_app,
    run_in_process,
    tiny_overrides,
)

N = 12


def _ov(model_dir, *extra):
    return tiny_overrides(model_dir, f"trainer.max_steps={N}", "trainer.batch_size=4",
                          "trainer.eval_before=false", "trainer.data_seed=0",
                          "task.decode.batch_size=4", "trainer.ckpt_every=4", *extra)  # fmt: skip


def test_a_bad_packed_job_is_refused_before_loading_with_the_solo_message(
    tiny_e2e_gpt2_dir, tmp_path
):
    from lora_jax.errors import ConfigError
    from lora_jax.run.jobs import run_jobs

    # model.source does not exist: had anything tried to load it, the error would say so
    bad = [*_ov(tiny_e2e_gpt2_dir), "model.source=/nonexistent/model", "optim.lr=-1"]
    with pytest.raises(ConfigError) as solo:
        run_in_process(bad, tmp_path / "solo")
    cfgs = [compose([*bad, f"seed={s}"]) for s in (1, 2)]
    recs = run_jobs(cfgs, [tmp_path / "p1", tmp_path / "p2"])
    for rec in recs:
        assert rec["status"] == "failed"
        assert rec["error"] == f"ConfigError: {solo.value}", rec["error"]
        assert "/nonexistent/model" not in rec["error"]
    assert read_results(tmp_path / "p1")["status"] == "failed"


def _job_dirs(out):
    return sorted(p for p in out.iterdir() if p.is_dir() and (p / ".hydra").is_dir())


def test_sigterm_preempts_every_job_of_a_pack_and_a_rerun_resumes_each(tiny_e2e_gpt2_dir, tmp_path):
    out = tmp_path / "ms"
    args = ["-m", "experiment=demo", "hydra/launcher=packed", "hydra.launcher.rank_bands=[]",
            *_ov(tiny_e2e_gpt2_dir), f"hydra.sweep.dir={out}", "lora.r=1,4", "seed=1"]  # fmt: skip
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "WANDB_MODE": "disabled",
           "JAX_DEFAULT_MATMUL_PRECISION": "highest"}  # fmt: skip
    proc = subprocess.Popen([sys.executable, "-m", "lora_jax.train", *args], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)  # fmt: skip
    deadline = time.time() + 240
    try:
        while time.time() < deadline and proc.poll() is None:
            if out.is_dir() and any((d / "checkpoints" / "4").is_dir() for d in _job_dirs(out)):
                break
            time.sleep(0.01)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143, proc.stderr.read()[-3000:]
    dirs = _job_dirs(out)
    recs = [read_results(d) for d in dirs]
    assert len(recs) == 2 and all(r["status"] == "preempted" for r in recs), recs
    stopped = {r["run"]["stopped_at"] for r in recs}
    assert len(stopped) == 1 and 0 < min(stopped) < N
    (stop,) = stopped

    # the sweep rerun with trainer.resume=true resumes every job from its own checkpoint
    again = run_app([*args, "trainer.resume=true"], env={"WANDB_MODE": "disabled",
                    "JAX_DEFAULT_MATMUL_PRECISION": "highest"}, timeout=300)  # fmt: skip
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    for d in dirs:
        rec = read_results(d)
        assert rec["status"] == "ok" and rec["run"]["resumed_at"] == stop
        assert [s for s, _ in rec["metrics"]["train"]["losses"]] == list(range(2, N + 1, 2))
    # a packed job resumed alone by its run dir (resume_from=RUN_DIR) ends where its
    # uninterrupted pack does: tests/packed/test_resume.py::test_a_stopped_packed_job_resumes_alone
