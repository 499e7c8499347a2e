"""SIGTERM (what SLURM sends before killing a job) sets a flag the training loop reads at step
boundaries (a Python attribute: no host sync); the run then checkpoints and writes
``results.json`` with status "preempted"."""

from __future__ import annotations

import signal
import threading
from typing import Any

from lora_jax.console import console


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
