"""Helpers for the training-app tests: compose the Hydra config in-process (no JAX start-up
per run) or run ``python -m lora_jax.train`` as a subprocess (for exit codes, console
messages, multirun and kill tests), always on the tiny GPT-2 of tests/conftest.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
CONF_DIR = str(ROOT / "conf")  # the checkout's tree (lora_jax.run.schema.conf_dir() in the app)


def tiny_overrides(model_dir: Path, *extra: str) -> list[str]:
    """A short, cheap run: synthetic E2E sample, greedy decoding of a few items, no Java."""
    return [
        "model=local",
        f"model.source={model_dir}",
        "task=e2e_sample",
        "task.options.coco_metrics=false",
        "task.max_train_examples=256",
        "task.max_eval_items=4",
        "task.decode.max_new_tokens=6",
        "trainer.progress=false",
        "trainer.batch_size=8",
        "trainer.max_steps=12",
        "trainer.log_every=2",
        "optim.warmup_steps=2",
        "trainer.val_examples=0",  # validation loss: tests/train/test_validation.py, test_wandb_sweeps
        *extra,
    ]


def compose(overrides: list[str]):
    """The config the app would run with these overrides (Hydra compose API)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from lora_jax.run import schema as config_schema

    config_schema.register()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return hydra_compose(config_name="config", overrides=overrides)


def run_in_process(overrides: list[str], run_dir: Path) -> dict[str, Any]:
    """``lora_jax.run.app.run`` on the composed config (what one Hydra job does)."""
    from lora_jax.run import app as train

    return train.run(compose(overrides), run_dir)


def run_app(
    args: list[str], env: dict[str, str] | None = None, timeout: float = 240, check: bool = False
) -> subprocess.CompletedProcess:
    """``python -m lora_jax.train *args`` from the repository root; stdout+stderr captured."""
    full_env = {**os.environ, "JAX_PLATFORMS": "cpu", **(env or {})}
    proc = subprocess.run(
        [sys.executable, "-m", "lora_jax.train", *args],
        cwd=ROOT,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check and proc.returncode != 0:
        pytest.fail(
            f"app failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        )
    return proc


def read_results(run_dir: Path) -> dict[str, Any]:
    return json.loads((run_dir / "results.json").read_text())


def lora_leaves(tree: Any) -> dict[str, Any]:
    """``{"path/to/leaf": np.ndarray}`` of a LoRA tree."""
    import jax
    import numpy as np

    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {jax.tree_util.keystr(p): np.asarray(v) for p, v in flat}


def load_final_lora(run_dir: Path, model_dir: Path, overrides: list[str]) -> dict[str, Any]:
    """The LoRA tree of the latest checkpoint of ``run_dir``, read with ``load_adapter`` into a
    template built from the same config."""
    import jax
    from omegaconf import OmegaConf

    from lora_jax.lora import LoraConfig
    from lora_jax.lora import init as lora_init
    from lora_jax.models.pretrained import load_model
    from lora_jax.models.registry import lora_modules
    from lora_jax.train.checkpoint import load_adapter

    cfg = compose(overrides)
    lm = load_model(str(model_dir))
    lcfg = OmegaConf.to_container(cfg.lora)
    template, _ = lora_init(
        jax.random.PRNGKey(123), lm.params, LoraConfig.from_dict(lcfg), lora_modules(lm.config)
    )
    return lora_leaves(load_adapter(run_dir / "checkpoints", template)[0])
