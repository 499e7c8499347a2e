"""A real multi-process run on CPU: the training app started as 2 processes (2 simulated CPU
devices each, ``jax.distributed`` over 127.0.0.1 with gloo collectives) trains on one global
``fsdp=4`` mesh across both, is preempted by a SIGTERM to one process and resumed, and its
losses, LoRA params and decoded outputs equal a single-device run of the same config; only
process 0 writes the run's files."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from tests.train.app import ROOT, compose, read_results, run_in_process, tiny_overrides

STEPS = 12  # the SIGTERM stop lands 2-3 steps after the signal (jax polls for it every second)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _lora(run_dir, overrides: list[str]) -> dict:
    """The final LoRA tree from the run's orbax checkpoint (restored onto one device), numpy."""
    from omegaconf import OmegaConf

    from lora_jax.lora import LoraConfig
    from lora_jax.lora import init as lora_init
    from lora_jax.models.pretrained import load_model
    from lora_jax.models.registry import lora_modules
    from lora_jax.train.checkpoint import load_adapter

    cfg = compose(overrides)
    lm = load_model(cfg.model.source)
    lcfg = LoraConfig.from_dict(OmegaConf.to_container(cfg.lora) | {"seed": cfg.seed})
    template, _ = lora_init(jax.random.PRNGKey(0), lm.params, lcfg, lora_modules(lm.config))
    lora, _ = load_adapter(run_dir, template, step=STEPS)
    return jax.tree.map(np.asarray, lora)


def _launch(overrides: list[str], out_dir, logs: list) -> list[subprocess.Popen]:
    """The training app as 2 processes × 2 CPU devices on one ``fsdp=4`` mesh."""
    port = _free_port()
    procs = []
    for i in range(2):
        env = {**os.environ, "JAX_PLATFORMS": "cpu",
               "XLA_FLAGS": "--xla_force_host_platform_device_count=2",
               "JAX_COORDINATOR_ADDRESS": f"127.0.0.1:{port}", "JAX_NUM_PROCESSES": "2",
               "JAX_PROCESS_ID": str(i)}  # fmt: skip
        args = [*overrides, "mesh=fsdp", "mesh.lora=fsdp", f"output_dir={out_dir}"]
        with logs[i].open("w") as log:
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "lora_jax.train", *args], cwd=ROOT, env=env,
                stdout=log, stderr=subprocess.STDOUT,
            ))  # fmt: skip
    return procs


def _wait(procs: list[subprocess.Popen], logs: list, timeout: float = 240) -> list[str]:
    """Wait for both; a process that fails leaves the other waiting for it: stop both then."""
    try:
        deadline = time.time() + timeout
        while time.time() < deadline and any(p.poll() is None for p in procs):
            if any(p.poll() not in (None, 0, 143) for p in procs):
                break
            time.sleep(0.2)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    return [log.read_text() for log in logs]


def test_two_processes_train_like_one_device_through_a_sigterm(tiny_e2e_gpt2_dir, tmp_path):
    """2 processes × 2 CPU devices train on one fsdp=4 mesh. SLURM's notice may reach one
    process of a job first: SIGTERM goes to process 1 only, and both stop after the same step
    and write one checkpoint there (a process stopping alone would leave the other in the
    step's collectives). Rerun with trainer.resume=true, the job ends like a single-device run
    of the whole schedule: losses, LoRA params and greedy outputs."""
    overrides = tiny_overrides(
        tiny_e2e_gpt2_dir, f"trainer.max_steps={STEPS}", "trainer.log_every=1",
        "trainer.ckpt_every=1",  # a checkpoint per step: the test sees the run's progress
        "trainer.eval_before=false", "task.max_train_examples=48", "task.max_len=64",
        "task.max_eval_items=2", "task.decode.max_new_tokens=3", "optim.warmup_steps=1",
        "trainer.bucket_step=64",  # one padded shape: one compile
        "optim.lr=0.01",
    )  # fmt: skip
    multi = tmp_path / "multi"
    logs = [tmp_path / f"process{i}.log" for i in range(2)]
    procs = _launch(overrides, multi, logs)
    ckpts = multi / "checkpoints"
    deadline = time.time() + 240
    while time.time() < deadline and all(p.poll() is None for p in procs):
        if ckpts.is_dir() and any(d.name.isdigit() and int(d.name) >= 2 for d in ckpts.iterdir()):
            break
        time.sleep(0.05)
    procs[1].send_signal(signal.SIGTERM)  # the notice reaches process 1 only
    outs = _wait(procs, logs)
    assert [p.returncode for p in procs] == [143, 143], "\n---\n".join(o[-3000:] for o in outs)
    # the processes saw one global mesh over both processes' devices
    assert "cpu: 4 x cpu, 2 process(es)" in outs[0], outs[0][-2000:]
    res = read_results(multi)
    assert res["status"] == "preempted", res.get("error")
    k = res["run"]["stopped_at"]
    assert 2 <= k < STEPS, k
    for out in outs:
        assert f"all processes stop at step {k} and checkpoint" in out, out[-3000:]

    logs = [tmp_path / f"resume{i}.log" for i in range(2)]
    procs = _launch([*overrides, "trainer.resume=true", "trainer.ckpt_every=null"], multi, logs)
    outs = _wait(procs, logs)
    for p, out in zip(procs, outs):
        assert p.returncode == 0, out[-4000:]
    res = read_results(multi)
    assert res["status"] == "ok", res.get("error")
    assert res["run"]["process_count"] == 2 and res["run"]["device_count"] == 4
    assert res["run"]["local_device_count"] == 2 and res["run"]["process_index"] == 0
    assert res["run"]["mesh"] == {"data": 1, "fsdp": 4}

    with jax.default_matmul_precision("highest"):  # fp32 matmuls in the reference
        ref = run_in_process(
            [*overrides, "mesh=single", "trainer.ckpt_every=null"], tmp_path / "single"
        )
    # fp32 everywhere; the multi-process run's matmul precision is the CPU default (fp32)
    got_losses = res["metrics"]["train"]["losses"]
    want_losses = ref["metrics"]["train"]["losses"]
    assert [s for s, _ in got_losses] == list(range(1, STEPS + 1))  # the first part's kept
    # a lost, repeated or misrestored step moves the loss by ~1e-2 (measured agreement: 2e-7)
    np.testing.assert_allclose([v for _, v in got_losses], [v for _, v in want_losses], rtol=1e-5)
    got, want = _lora(multi, overrides), _lora(tmp_path / "single", overrides)
    assert jax.tree.structure(got) == jax.tree.structure(want)
    moved = False
    for x, y in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        # Adam's g/√v turns rounding-level gradient differences into up to ~1e-3 of a step (lr)
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-5 * np.abs(y).max() + 1e-5)
        moved |= x.ndim == 2 and bool(np.abs(y).max() > 0) and x.shape[0] < x.shape[1]
    assert moved, "B stayed 0: the run did not train"
    # decoding ran in both processes over the sharded base: same greedy outputs
    assert (multi / "predictions_eval.txt").read_text() == (
        tmp_path / "single" / "predictions_eval.txt"
    ).read_text()
    # one process wrote the files: no second lock holder, no per-process leftovers
    leftovers = sorted(p.name for p in (multi / "data").iterdir() if p.name.endswith(".tmp"))
    assert leftovers == []


@pytest.mark.parametrize(
    "env, message",
    [
        ({"JAX_COORDINATOR_ADDRESS": "127.0.0.1:1"}, "set JAX_NUM_PROCESSES"),
        (
            {
                "JAX_COORDINATOR_ADDRESS": "127.0.0.1:1",
                "JAX_NUM_PROCESSES": "2",
                "JAX_PROCESS_ID": "2",
            },
            "must be in [0, JAX_NUM_PROCESSES=2)",
        ),  # fmt: skip
        ({"JAX_COORDINATOR_ADDRESS": "127.0.0.1:1", "JAX_NUM_PROCESSES": "2"}, "must both be set"),
    ],
)
def test_incomplete_launch_env_is_refused(monkeypatch, env, message):
    from lora_jax.train import sharding

    for key in ("JAX_NUM_PROCESSES", "JAX_PROCESS_ID", "SLURM_JOB_ID", "TPU_WORKER_HOSTNAMES",
                "KUBERNETES_SERVICE_HOST", "OMPI_MCA_orte_hnp_uri", "PMIX_SERVER_URI"):  # fmt: skip
        monkeypatch.delenv(key, raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace(")", r"\)")):
        sharding.maybe_initialize_distributed()
    assert sharding.launch_rank() == int(env.get("JAX_PROCESS_ID", 0))
