"""A run's saved config: what ``resume_from=RUN_DIR`` and ``python -m lora_jax.evaluate RUN_DIR``
read instead of the original overrides.

Every run writes its resolved config to ``RUN_DIR/config.yaml`` when it starts (lora_jax.run.jobs;
packed jobs too), before any step, so a run killed at any point can be resumed by its dir. Older
run dirs without it fall back to the config in ``results.json``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import yaml
from omegaconf import DictConfig, OmegaConf

from lora_jax.errors import ConfigError, MissingFile

CONFIG = "config.yaml"


def write_config(resolved: dict, run_dir: Path) -> None:
    OmegaConf.save(OmegaConf.create(resolved), Path(run_dir) / CONFIG)


def run_dir_of(path: str | Path) -> Path:
    """The run dir named by ``path`` (the dir itself or its ``checkpoints/``)."""
    if not str(path).strip():
        raise ConfigError("an empty run dir was given; pass the directory of a training run")
    p = Path(path)
    if p.name == "checkpoints":
        p = p.parent
    if not p.is_dir():
        raise MissingFile(f"{path}: no such run dir")
    return p


def saved_config(path: str | Path, overrides: Sequence[str] = ()) -> DictConfig:
    """The resolved config a run was started with, plus ``overrides`` (``key=value``)."""
    run_dir = run_dir_of(path)
    if (run_dir / CONFIG).is_file():
        cfg = OmegaConf.load(run_dir / CONFIG)
    elif (run_dir / "results.json").is_file():
        cfg = OmegaConf.create(json.loads((run_dir / "results.json").read_text())["config"])
    else:
        raise MissingFile(
            f"{run_dir} holds neither {CONFIG} nor results.json: not a lora-jax run dir (pass the "
            "directory a training run wrote)"
        )
    for o in overrides:
        key, eq, value = o.lstrip("+").partition("=")
        if not eq:
            raise ConfigError(f"override {o!r}: use key=value")
        OmegaConf.update(cfg, key, yaml.safe_load(value) if value else None,
                         force_add=o.startswith("+"))  # fmt: skip
    return cfg
