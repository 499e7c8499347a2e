"""The packed launcher: ``python -m lora_jax.train -m ... hydra/launcher=packed``.

Like Hydra's BasicLauncher it composes every job's config (``load_sweep_config``), gives it its
run dir (``hydra.sweep.dir``/``hydra.sweep.subdir``) with ``.hydra/{config,hydra,overrides}.yaml``
and returns one ``JobReturn`` per job in sweep order (return value: the job's main metric, or
None for a failed job, as the app's multirun does). Instead of calling the task function per
job, it groups the jobs (lora_jax.run.packs.make_packs) and runs each pack in this process
with lora_jax.run.jobs.run_jobs (the engine every run uses). It serves the lora_jax.train app only.
"""

from __future__ import annotations

import copy
import logging
import os
from collections.abc import Sequence
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import (
    JobReturn,
    JobStatus,
    _save_config,
    configure_log,
    filter_overrides,
    setup_globals,
)
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

log = logging.getLogger(__name__)


def parse_pack_size(value: int | str) -> int | str:
    """``hydra.launcher.pack_size``: a positive job count or ``auto``."""
    if isinstance(value, str) and value.strip().lower() == "auto":
        return "auto"
    try:
        n = int(value)
    except (TypeError, ValueError):
        n = 0
    if n < 1 or (isinstance(value, float) and value != n):
        raise ValueError(
            f"hydra.launcher.pack_size must be a positive number of jobs or auto; got {value!r}"
        )
    return n


class PackedLauncher(Launcher):
    def __init__(
        self,
        pack_size: int | str = 8,
        rank_bands: Sequence[int] = (16,),
        memory_fraction: float = 0.8,
        memory_budget_bytes: int | None = None,
    ) -> None:
        super().__init__()
        self.pack_size = parse_pack_size(pack_size)
        self.rank_bands = [int(b) for b in rank_bands]
        self.memory_fraction = float(memory_fraction)
        self.memory_budget_bytes = None if memory_budget_bytes is None else int(memory_budget_bytes)
        self.config: DictConfig | None = None
        self.task_function: TaskFunction | None = None
        self.hydra_context: HydraContext | None = None

    def setup(
        self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig
    ) -> None:
        self.config, self.hydra_context, self.task_function = config, hydra_context, task_function

    def launch(
        self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int
    ) -> Sequence[JobReturn]:
        from lora_jax.run.guard import SweepStatus
        from lora_jax.run.jobs import run_jobs
        from lora_jax.run.packs import make_packs

        setup_globals()
        assert self.config is not None and self.hydra_context is not None
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        orig = HydraConfig.instance().cfg
        rets, cfgs, dirs = [], [], []
        try:
            for i, overrides in enumerate(job_overrides):
                idx = initial_job_idx + i
                log.info(f"\t#{idx} : {' '.join(filter_overrides(overrides))}")
                ret, task_cfg, out = self._prepare(list(overrides), idx)
                rets.append(ret)
                cfgs.append(task_cfg)
                dirs.append(out)
        finally:
            HydraConfig.instance().cfg = orig
        if self.pack_size == "auto":  # whole groups, cut by the compiled step's memory
            from lora_jax.run.pack_memory import auto_packs

            groups = make_packs(cfgs, max(len(cfgs), 1), self.rank_bands)
            packs = auto_packs(cfgs, groups, self.memory_fraction, self.memory_budget_bytes)
        else:
            packs = make_packs(cfgs, self.pack_size, self.rank_bands)
        log.info(f"Launching {len(cfgs)} jobs in {len(packs)} packs: {packs}")
        for pack in packs:
            results = run_jobs([cfgs[i] for i in pack], [dirs[i] for i in pack])
            for i, res in zip(pack, results):
                if res["status"] != "ok":  # the app exits 1 after the sweep, as for solo jobs
                    SweepStatus.job_errors.append((str(dirs[i]), "failed", res.get("error") or ""))
                main = (
                    res["metrics"]["eval"].get(res["main_metric"])
                    if res.get("main_metric")
                    else None
                )
                rets[i].return_value = (
                    main if isinstance(main, float) and res["status"] == "ok" else None
                )
                rets[i].status = JobStatus.COMPLETED
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        return rets

    def _prepare(self, overrides: list[str], idx: int) -> tuple[JobReturn, DictConfig, Path]:
        """The job's composed config, run dir and .hydra files (what hydra's run_job does before
        it calls the task function)."""
        assert self.hydra_context is not None and self.config is not None
        cfg = self.hydra_context.config_loader.load_sweep_config(self.config, overrides)
        with open_dict(cfg):
            cfg.hydra.job.id = idx
            cfg.hydra.job.num = idx
        HydraConfig.instance().set_config(cfg)
        out = Path(str(cfg.hydra.sweep.dir)) / str(OmegaConf.select(cfg, "hydra.sweep.subdir"))
        with read_write(cfg.hydra.runtime), open_dict(cfg.hydra.runtime):
            cfg.hydra.runtime.output_dir = os.path.abspath(out)
        HydraConfig.instance().set_config(cfg)
        task_cfg = copy.deepcopy(cfg)
        with read_write(task_cfg), open_dict(task_cfg):
            del task_cfg["hydra"]
        # resolve now, while this job's HydraConfig is set (interpolations may read it)
        resolved = OmegaConf.create(OmegaConf.to_container(task_cfg, resolve=True))
        ret = JobReturn()
        ret.cfg, ret.hydra_cfg = task_cfg, copy.deepcopy(HydraConfig.instance().cfg)
        ret.overrides = OmegaConf.to_container(cfg.hydra.overrides.task)
        ret.working_dir = os.getcwd()
        ret.task_name = cfg.hydra.job.name
        out.mkdir(parents=True, exist_ok=True)
        if cfg.hydra.output_subdir is not None:
            sub = out / str(cfg.hydra.output_subdir)
            _save_config(task_cfg, "config.yaml", sub)
            _save_config(HydraConfig.instance().cfg, "hydra.yaml", sub)
            _save_config(cfg.hydra.overrides.task, "overrides.yaml", sub)
        return ret, resolved, out
