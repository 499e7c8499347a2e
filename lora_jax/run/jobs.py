"""Around the engine: what keeps unattended runs from losing or mixing results, for one job (a
solo run) or a pack of K jobs (``hydra/launcher=packed``), from the same code.

``run_jobs(cfgs, run_dirs)``, per job, before any model is loaded: its run dir locked (one
process per dir; in a multi-process job process 0 holds it), its checkpoint dir checked (a new
run refuses one holding checkpoints, a resume one written with another config), a finished run
kept as it is (``trainer.resume=true`` on a run whose results.json says "ok"), its config
range-checked (lora_jax.train.checks), its record started and its W&B run opened. Then one
:func:`lora_jax.train.engine.train_and_eval` over the jobs that remain, and each record
finished and written, whatever happened: status "ok", "failed" (with the error, and the
traceback) or "preempted" (SIGTERM: every job checkpointed, resume with
``trainer.resume=true``).

A solo run (``solo=True``) raises its error after writing its record (the app prints a user
error as one line); in a pack a job's error fails that job only, and an error of the pack as a
whole fails every job still running.
"""

from __future__ import annotations

import contextlib
import json
import time
import traceback
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from lora_jax.console import console
from lora_jax.errors import CheckpointError, ConfigError, RunDirInUse
from lora_jax.run.guard import RunDirLock
from lora_jax.run.malloc import status as host_malloc_status
from lora_jax.run.saved import write_config
from lora_jax.run.tracking import Tracker
from lora_jax.train import record, sharding
from lora_jax.train.checkpoint import Checkpointer, run_fingerprint
from lora_jax.train.checks import check_config
from lora_jax.train.engine import Job, train_and_eval
from lora_jax.train.preemption import PREEMPTION, Preempted


def finished_record(run_dir: Path) -> dict | None:
    """The record of a run that finished ok (not stopped by ``trainer.stop_after``), else None."""
    try:
        rec = json.loads((Path(run_dir) / record.RESULTS).read_text())
    except (OSError, ValueError):
        return None
    done = rec.get("status") == "ok" and not (rec.get("run") or {}).get("stopped_at")
    return rec if done else None


class _Runs:
    """The jobs of one call: their locks, checkpointers, records and trackers."""

    def __init__(self, cfgs: list[DictConfig], run_dirs: list[Path], solo: bool) -> None:
        self.cfgs, self.dirs, self.solo = cfgs, [Path(d) for d in run_dirs], solo
        self.out: list[dict | None] = [None] * len(cfgs)
        self.jobs: list[Job] = []
        self.refused: set[int] = set()  # run dirs of other runs: never written

    def _refuse(self, i: int, error: Exception) -> None:
        if self.solo:
            raise error
        self.refused.add(i)
        console.print(f"[red]run {self.cfgs[i].name} refused[/]: {error}")
        self.out[i] = {"status": "failed", "error": f"{type(error).__name__}: {error}",
                       "metrics": {"eval": {}}, "main_metric": None}  # fmt: skip

    def open(self, held: contextlib.ExitStack) -> None:
        names = [str(c.name) for c in self.cfgs]
        for i, (cfg, run_dir) in enumerate(zip(self.cfgs, self.dirs)):
            try:
                if sharding.is_primary():
                    held.enter_context(RunDirLock(run_dir))
                resolved = OmegaConf.to_container(cfg, resolve=True)
                tcfg = cfg.trainer
                ckpt = Checkpointer(run_dir / "checkpoints", keep=max(int(tcfg.ckpt_keep), 1),
                                    run_config=run_fingerprint(resolved))  # fmt: skip
                held.callback(ckpt.close)
                # eval_only never resumes: a dir with a training run's checkpoints is refused
                ckpt.check_resume(bool(tcfg.resume) and not tcfg.eval_only)
            except (RunDirInUse, CheckpointError) as e:
                self._refuse(i, e)
                continue
            done = finished_record(run_dir) if tcfg.resume else None
            if done is not None:
                console.print(f"{run_dir} holds a finished run (results.json status ok); "
                              "nothing to resume, results kept")  # fmt: skip
                self.out[i] = done
                continue
            results = record.new_record(cfg.name, run_dir, resolved, record.sweep_key(resolved))
            results["run"]["host_malloc"] = host_malloc_status()
            if sharding.is_primary():  # resume_from=RUN_DIR / evaluate RUN_DIR read it
                write_config(resolved, run_dir)
            if not self.solo:
                results["run"]["pack"] = {"index": i, "size": len(self.cfgs), "jobs": names}
            self.jobs.append(Job(cfg, run_dir, results, ckpt, on_fail=self._write))

    def _write(self, job: Job) -> None:
        """A job failed: its record now (rewritten with the final times at the end) and its
        W&B run finished with exit code 1 at the moment it failed."""
        record.write(job.results, job.run_dir)
        _close_tracker(job)

    def check(self) -> None:
        """Range checks and the trackers, per job (a failure fails that job)."""
        for j in self.jobs:
            try:
                check_config(OmegaConf.to_container(j.cfg, resolve=True))
                if not self.solo and j.cfg.get("method", "lora") == "full":
                    raise ConfigError("method=full runs are not packed (there is no adapter to "
                                      "stack): run them with the basic launcher")  # fmt: skip
                if not self.solo and (j.cfg.adapter or j.cfg.trainer.eval_only):
                    raise ConfigError("adapter=/trainer.eval_only runs are not packed; use "
                                      "python -m lora_jax.evaluate RUN_DIR or --adapters")  # fmt: skip
                logger = (
                    j.cfg.logger if sharding.is_primary() else {"name": "none"}
                )  # W&B: process 0
                j.tracker = Tracker(logger, j.run_dir, j.cfg.name, j.results["sweep"], j.results["config"],
                                    concurrent=not self.solo)  # fmt: skip
            except Exception as e:
                if self.solo:
                    raise
                j.alive = False
                _set_failed(j, e)
                self._write(j)

    def finish(self, t0: float) -> None:
        wall = time.time() - t0
        for j in self.jobs:
            r = j.results
            if r["status"] == "running":
                r["status"] = "ok"
            if self.solo:
                record.finish(r, t0)
            else:  # the pack's wall time, shared
                record.finish(r, time.time() - wall / max(len(self.jobs), 1))
                r["run"]["pack"]["wall_time_s"] = wall
            record.write(r, j.run_dir)
            _close_tracker(j)
        for i, j in zip([i for i, o in enumerate(self.out) if o is None and i not in self.refused],
                        self.jobs):  # fmt: skip
            self.out[i] = j.results


def _close_tracker(j: Job) -> None:
    """The record into the W&B summary, then the run finishes (exit code 1 unless ok)."""
    tracker, j.tracker = j.tracker, None
    if tracker is not None:
        try:
            tracker.update_axes(j.results["sweep"])
            tracker.record(j.results)
        finally:
            tracker.finish(exit_code=0 if j.results["status"] == "ok" else 1)


def _set_failed(j: Job, e: BaseException) -> None:
    j.results["status"], j.results["error"] = "failed", f"{type(e).__name__}: {e}"
    j.results["traceback"] = "".join(traceback.format_exception(e))


def run_jobs(cfgs: list[DictConfig], run_dirs: list[Path], solo: bool = False) -> list[dict]:
    """Train and evaluate the jobs (one solo run, or one pack); returns their records, also
    written to each ``run_dir/results.json``. See the module doc."""
    if not solo:
        from lora_jax.run.packs import pack_key

        if len({pack_key(c) for c in cfgs}) != 1:
            raise ConfigError(
                "these jobs cannot share a pack (lora_jax.run.packs.make_packs groups them)"
            )
    sharding.maybe_initialize_distributed(cfgs[0].mesh.distributed)  # before other jax calls
    t0 = time.time()
    runs = _Runs(cfgs, run_dirs, solo)
    with contextlib.ExitStack() as held:
        runs.open(held)
        try:
            runs.check()
            live = [j for j in runs.jobs if j.alive]
            if live:
                if PREEMPTION.requested:
                    raise Preempted("SIGTERM received before the run started")
                PREEMPTION.install()
                train_and_eval(live)
        except Preempted as e:
            for j in runs.jobs:
                if j.alive and j.results["status"] == "running":
                    j.results["status"], j.results["error"] = "preempted", str(e)
        except BaseException as e:
            for j in runs.jobs:
                if j.results["status"] == "running":
                    _set_failed(j, e)
            if solo or not isinstance(e, Exception):
                raise
        finally:
            runs.finish(t0)
    return [o if o is not None else {} for o in runs.out]
