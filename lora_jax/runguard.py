"""What keeps unattended runs from losing or mixing results, outside the training math:

- ``RunDirLock``: one process per run dir (an exclusive ``fcntl`` lock on ``<run dir>/.lock``,
  released by the OS even on ``kill -9``), so two runs never write into one folder;
- ``PREEMPTION``: SIGTERM (what SLURM sends before killing a job) sets a flag the training loop
  reads at step boundaries (a Python attribute: no host sync); the run then checkpoints and
  writes ``results.json`` with status "preempted";
- ``SweepStatus``: a Hydra callback that, after all jobs of a multirun ran, collects the jobs
  whose ``results.json`` is not "ok", so the app exits non-zero;
- ``RunDirGuard``: a Hydra callback that refuses a single run's dir before Hydra writes its
  ``.hydra/`` files into it, when another process holds it or (without
  ``trainer.resume=true``) it holds another run's checkpoints. ``lora_jax.train.run`` checks
  the same again (and the stored config) for callers that bypass Hydra.
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback

from lora_jax.sharding import launch_rank
from lora_jax.tracking import console


class RunDirInUse(RuntimeError):
    """Another live process holds the run dir."""


class RunDirLock:
    """``with RunDirLock(run_dir):`` holds ``<run_dir>/.lock`` exclusively or raises RunDirInUse."""

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / ".lock"
        self.fd: int | None = None

    def __enter__(self) -> RunDirLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise RunDirInUse(
                f"{self.path.parent} is in use by another process (pid {holder}); two runs must "
                "not share a run dir. Wait for it, or use another hydra.run.dir / output_dir"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self.fd = fd
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None


class Preemption:
    """SIGTERM → ``requested = True`` (sticky: once the job is told to stop, every later run
    in this process stops at its first step boundary too).

    Multi-process runs (``jax.process_count() > 1``) must all stop at the same step: a process
    that stopped alone would leave the others waiting in the step's collectives. There the
    SIGTERM handler is jax's own (its preemption sync manager, installed by
    ``jax.distributed.initialize``; a Python handler would replace it), which tells every
    process of a notice that reached any of them, and :meth:`should_stop` asks it
    (``multihost_utils.reached_preemption_sync_point``) at every step: it is true on all
    processes at the same step, the first one after the highest step any process had reached.
    """

    def __init__(self) -> None:
        self.requested = False
        self._installed = False
        self._multiprocess = False

    def install(self) -> None:
        import jax

        if jax.process_count() > 1:
            self._multiprocess = True  # jax's SIGTERM handler stays in place
            return
        if self._installed or threading.current_thread() is not threading.main_thread():
            return
        signal.signal(signal.SIGTERM, self._handle)
        self._installed = True

    def should_stop(self, step: int) -> bool:
        """Whether to checkpoint and stop after ``step`` (call once per step, with the same
        step numbers on every process)."""
        if self._multiprocess and not self.requested:
            from jax.experimental import multihost_utils

            if multihost_utils.reached_preemption_sync_point(step):
                self.requested = True
                console.print(
                    f"[yellow]SIGTERM[/] (to a process of this job): all processes stop at step "
                    f"{step} and checkpoint"
                )
        return self.requested

    def _handle(self, signum: int, frame: Any) -> None:
        self.requested = True
        console.print("[yellow]SIGTERM[/]: checkpointing at the next step boundary, then stopping")


PREEMPTION = Preemption()


class Preempted(Exception):
    """Raised after the preemption checkpoint is written; the run's status is "preempted"."""


class SweepStatus(Callback):
    """Hydra callback (``hydra.callbacks.sweep_status`` in conf/config.yaml): after a multirun,
    ``SweepStatus.failed`` lists ``(job dir, status, error)`` of the jobs that did not finish
    "ok"; ``lora_jax.train.main`` then exits with status 1."""

    failed: list[tuple[str, str, str]] = []  # from the sweep dir's results.json files
    job_errors: list[tuple[str, str, str]] = []  # jobs of this process that raised or stopped

    def on_multirun_end(self, config: Any, **kwargs: Any) -> None:
        sweep_dir = Path(str(config.hydra.sweep.dir))
        bad = []
        for res in sorted(sweep_dir.glob("*/results.json")):
            try:
                rec = json.loads(res.read_text())
                status, err = rec.get("status"), rec.get("error") or ""
            except (OSError, ValueError) as e:
                status, err = "unreadable", str(e)
            if status != "ok":
                bad.append((str(res.parent), str(status), str(err)))
        SweepStatus.failed = bad


class RunDirGuard(Callback):
    """Hydra callback (``hydra.callbacks.run_dir_guard``): checks a single run's dir before
    Hydra saves ``.hydra/config.yaml`` there, so a refused run changes nothing on disk."""

    def on_run_start(self, config: Any, **kwargs: Any) -> None:
        run_dir = Path(str(config.get("output_dir") or config.hydra.run.dir))
        if not run_dir.is_dir():
            return
        problem = None
        # the processes of one multi-process job share the run dir; process 0 holds the lock
        if (run_dir / ".lock").exists() and launch_rank() == 0:
            try:
                with RunDirLock(run_dir):
                    pass
            except RunDirInUse as e:
                problem = str(e)
        ckpts = run_dir / "checkpoints"
        steps = (
            sorted(int(p.name) for p in ckpts.iterdir() if p.name.isdigit())
            if ckpts.is_dir()
            else []
        )
        trainer = config.get("trainer") or {}
        if (
            problem is None
            and steps
            and not (trainer.get("resume") and not trainer.get("eval_only"))
        ):
            problem = (
                f"{ckpts} already holds checkpoints (steps {steps}) of an earlier run. Continue "
                "that run with trainer.resume=true, or start this one in a new run dir "
                "(hydra.run.dir=... or output_dir=...); nothing was overwritten"
            )
        if problem:
            console.print(f"[red]error[/]: {problem}", soft_wrap=True)
            sys.exit(1)
