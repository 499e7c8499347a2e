"""The training app: ``python -m lora_jax.train [overrides]`` (console script lora-jax-train).

One run: compose the Hydra config (conf/) → lora_jax.run.jobs (run dir lock, checkpoint dir
checks, config checks, record, W&B) → lora_jax.train.engine (load the frozen model, init the
LoRA tree and its optimizer, tokenize and bucket the task, jitted train steps with orbax
checkpoints, decode + task metrics before and after) → ``results.json``, ``predictions.txt``
and W&B. A failing run still writes ``results.json`` (status "failed"); in a multirun the sweep
goes on. ``hydra/launcher=packed`` trains a multirun's jobs in packs through the same engine.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from lora_jax.console import console
from lora_jax.errors import LoraJaxError, NonFiniteLoss  # noqa: F401  (NonFiniteLoss: API)
from lora_jax.run import schema as config_schema
from lora_jax.run.guard import SweepStatus
from lora_jax.run.jobs import run_jobs

CONF_DIR = str(config_schema.conf_dir())

# Errors a user can fix, each with a message naming the fix (lora_jax.errors): a single run
# prints the message and exits 1 without a Python traceback (results.json keeps it).
USER_ERRORS = (LoraJaxError,)


def run(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    """Train and evaluate one configuration; returns the run record (lora_jax.train.record),
    also written to ``run_dir/results.json`` (lora_jax.run.jobs: the run dir is locked, a dir
    with another run's checkpoints refused, a finished run's record returned on resume)."""
    return run_jobs([cfg], [run_dir], solo=True)[0]


@hydra.main(config_path=CONF_DIR, config_name="config", version_base="1.3")
def _hydra_main(cfg: DictConfig) -> float | None:
    quiet_libraries()  # again: Hydra re-configures logging when the job starts
    hc = HydraConfig.get()
    run_dir = Path(cfg.output_dir or hc.runtime.output_dir)
    try:
        res = run(cfg, run_dir)
    except Exception as e:
        if hc.mode == RunMode.MULTIRUN:  # one failing run must not stop the sweep
            console.print(
                f"[red]run {cfg.name} failed[/]: {type(e).__name__}: {e} (see {run_dir}/results.json)"
            )
            SweepStatus.job_errors.append((str(run_dir), "failed", f"{type(e).__name__}: {e}"))
            return None
        if isinstance(e, USER_ERRORS):  # a user's mistake: the message, not a traceback
            where = run_dir / "results.json"
            console.print(f"[red]error[/]: {e}", soft_wrap=True)
            if where.is_file() and '"traceback"' in where.read_text():
                console.print(f"(full traceback in {where})", soft_wrap=True)
            raise SystemExit(1) from None
        raise
    if res["status"] == "preempted":
        console.print(f"[yellow]{res['error']}[/]")
        SweepStatus.job_errors.append((str(run_dir), "preempted", res["error"]))
    main = res["metrics"]["eval"].get(res["main_metric"]) if res["main_metric"] else None
    return main if isinstance(main, float) else None


def _run_by_dir(run_dir: Path, cfg: DictConfig) -> float | None:
    """One run outside Hydra's composition (``resume_from=RUN_DIR``): the same handling of its
    outcome as :func:`_hydra_main`'s single run."""
    try:
        res = run(cfg, run_dir)
    except USER_ERRORS as e:
        console.print(f"[red]error[/]: {e}", soft_wrap=True)
        raise SystemExit(1) from None
    if res["status"] == "preempted":
        console.print(f"[yellow]{res['error']}[/]")
        SweepStatus.job_errors.append((str(run_dir), "preempted", res["error"]))
    return None


def resume_from(path: str, overrides: list[str]) -> None:
    """``python -m lora_jax.train resume_from=RUN_DIR [key=value ...]``: continue the run in
    RUN_DIR from its newest checkpoint with the config it was started with (its
    ``config.yaml``); no original override needs repeating. A finished run is kept."""
    from lora_jax.run.saved import run_dir_of, saved_config

    try:
        run_dir = run_dir_of(path)
        cfg = saved_config(run_dir, [*overrides, "trainer.resume=true", f"output_dir={run_dir}"])
    except USER_ERRORS as e:
        console.print(f"[red]error[/]: {e}", soft_wrap=True)
        raise SystemExit(1) from None
    console.print(f"resuming {run_dir} with its saved config")
    _run_by_dir(run_dir, cfg)


def main() -> None:
    config_schema.register()
    quiet_libraries()
    by_dir = [a for a in sys.argv[1:] if a.startswith("resume_from=")]
    if by_dir:
        rest = [a for a in sys.argv[1:] if a not in by_dir]
        resume_from(by_dir[-1].split("=", 1)[1], rest)
    else:
        _hydra_main()
    # After every job ran: a multirun with a failed job, or a preempted run, exits non-zero.
    bad = {d: (s, e) for d, s, e in SweepStatus.job_errors + SweepStatus.failed}
    if bad:
        for d, (s, e) in sorted(bad.items()):
            console.print(f"[red]{s}[/]: {d}: {e.splitlines()[0] if e else ''}")
        preempted = all(s == "preempted" for s, _ in bad.values())
        console.print(f"{len(bad)} run(s) did not finish ok (see their results.json)")
        sys.exit(143 if preempted else 1)  # 143 = 128 + SIGTERM, what schedulers expect


def quiet_libraries() -> None:
    """orbax logs every checkpoint step through absl at INFO; keep the console for our lines."""
    import logging
    import warnings

    for name in ("absl", "jax._src.xla_bridge", "orbax"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message="Some donated buffers were not usable")


if __name__ == "__main__":
    main()
