"""What keeps unattended runs from losing or mixing results, outside the training math:

- ``RunDirLock``: one process per run dir (an exclusive ``fcntl`` lock on ``<run dir>/.lock``,
  released by the OS even on ``kill -9``), so two runs never write into one folder;
- ``SweepStatus``: a Hydra callback that, after all jobs of a multirun ran, collects the jobs
  whose ``results.json`` is not "ok", so the app exits non-zero;
- ``RunDirGuard``: a Hydra callback that refuses a single run's dir before Hydra writes its
  ``.hydra/`` files into it, when another process holds it or (without
  ``trainer.resume=true``) it holds another run's checkpoints. ``lora_jax.run.app.run`` checks
  the same again (and the stored config) for callers that bypass Hydra.
"""

from __future__ import annotations

import fcntl
import json
import os
import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback

from lora_jax.console import console
from lora_jax.errors import RunDirInUse  # noqa: F401  (raised here; the project's type)
from lora_jax.train.sharding import launch_rank


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


class SweepStatus(Callback):
    """Hydra callback (``hydra.callbacks.sweep_status`` in conf/config.yaml): after a multirun,
    ``SweepStatus.failed`` lists ``(job dir, status, error)`` of the jobs that did not finish
    "ok"; ``lora_jax.run.app.main`` then exits with status 1."""

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
