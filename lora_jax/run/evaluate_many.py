"""Evaluate saved adapters against one base in one program per batch shape:
``python -m lora_jax.evaluate --adapters RUN_DIR [RUN_DIR ...]``.

Each RUN_DIR is a training run's directory (solo or packed; its ``results.json`` gives the LoRA
config, model and task) or its ``checkpoints/`` folder. All adapters must share the base model;
the task, its eval items and decoding settings are the first run's. The adapters are stacked
(lora_jax.lora.stack) and decoded together (lora_jax.eval.multi_decode): adapter k's hypotheses
are those of decoding it alone.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import jax
from omegaconf import OmegaConf

from lora_jax.errors import ConfigError, MissingFile
from lora_jax.eval.multi_decode import decode_items_multi
from lora_jax.lora import LoraConfig
from lora_jax.lora import init as lora_init
from lora_jax.lora.stack import stack
from lora_jax.models.pretrained import load_for_run as load_base
from lora_jax.models.registry import lora_modules
from lora_jax.train.checkpoint import load_adapter
from lora_jax.train.data import build_task


def _run_dir(path: str) -> Path:
    p = Path(path)
    if p.name == "checkpoints":
        p = p.parent
    if not (p / "results.json").exists():
        raise MissingFile(
            f"{path}: no results.json; pass a training run's directory (or its checkpoints/)"
        )
    return p


def evaluate_adapters(
    run_dirs: Sequence[str | Path], max_eval_items: int | None = None
) -> list[dict]:
    """-> per adapter: {"run": dir, "name": run name, "metrics": {...}, "predictions": [...]}."""
    dirs = [_run_dir(str(d)) for d in run_dirs]
    cfgs = [OmegaConf.create(json.loads((d / "results.json").read_text())["config"]) for d in dirs]
    sources = {c.model.source for c in cfgs}
    if len(sources) != 1:
        raise ConfigError(
            f"the adapters were trained on different base models {sorted(sources)}; evaluate them separately"
        )
    cfg0 = cfgs[0]
    lm = load_base(cfg0)  # as the runs trained: precision policy, model.quant
    trees = []
    for d, c in zip(dirs, cfgs):
        lcfg = {k: v for k, v in OmegaConf.to_container(c.lora).items() if k != "preset"}
        template, _ = lora_init(
            jax.random.PRNGKey(0), lm.params, LoraConfig.from_dict(lcfg), lora_modules(lm.config)
        )
        trees.append(load_adapter(d / "checkpoints", template)[0])
    stacked, _ = stack(trees, base=(lm.params, lora_modules(lm.config)))
    task = build_task(cfg0.task, dirs[0])
    items = task.eval_groups(task.load("eval"))
    limit = max_eval_items or cfg0.task.max_eval_items
    if limit:
        items = items[:limit]
    hyps = decode_items_multi(lm.module, lm.params, stacked, lm.config, lm.tokenizer, task, items,
                              cfg0.task.format, cfg0.task.decode, cfg0.task.max_len,
                              cfg0.task.get("add_bos"))  # fmt: skip
    return [
        {
            "run": str(d),
            "name": str(c.name),
            "metrics": task.score(h, list(items)),
            "predictions": h,
        }
        for d, c, h in zip(dirs, cfgs, hyps)
    ]
