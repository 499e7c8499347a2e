"""The run's data, from its config: the task, the training batches and the held-out batches.

One source for every job of the engine (a pack shares one data order: lora_jax.run.packs)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from lora_jax.errors import ConfigError, MissingFile
from lora_jax.tasks import get_task
from lora_jax.tasks.batching import TrainBatches, default_buckets, linear_buckets
from lora_jax.tasks.formatting import encode_example
from lora_jax.tasks.sample import write_e2e_sample
from lora_jax.train.validation import validation_batches as _held_out_batches

TASK_KEYS = ("dataset", "data_dir", "data_files", "train_file", "eval_file", "train_split",
             "eval_split")  # fmt: skip


def build_task(tc: DictConfig, run_dir: Path) -> Any:
    """The task of ``task.*`` (``task.sample=true``: the embedded E2E sample, written into the
    run dir)."""
    kw: dict[str, Any] = {}
    for k in TASK_KEYS:
        v = tc.get(k)
        if v is not None and not (k == "data_files" and len(v) == 0):  # {}: not given
            kw[k] = OmegaConf.to_container(v) if OmegaConf.is_config(v) else v
    if tc.sample:
        if tc.name != "e2e":
            raise ConfigError(
                f"task.sample=true writes an E2E-format sample; it does not apply to task {tc.name!r}"
            )
        train_csv, test_csv = write_e2e_sample(run_dir / "data")
        kw = {"data_files": {"train": str(train_csv), "eval": str(test_csv)}}
    if kw.get("data_dir") is not None and not Path(kw["data_dir"]).is_dir():
        raise MissingFile(
            f"task.data_dir={kw['data_dir']!r} is not a directory; point it at the folder with the task's files"
        )
    return get_task(tc.name, **kw, **OmegaConf.to_container(tc.options))


def data_seed(cfg: DictConfig) -> int:
    """The seed of the batch order: ``trainer.data_seed``, or ``seed`` when it is null."""
    ds = cfg.trainer.get("data_seed")
    return int(cfg.seed if ds is None else ds)


def encode(cfg: DictConfig, tok: Any, task: Any, examples: list) -> list[dict]:
    tc = cfg.task
    return [encode_example(tok, ex, tc.format, tc.max_len, task, tc.add_bos) for ex in examples]


def train_batches(cfg: DictConfig, tok: Any, task: Any) -> tuple[TrainBatches, int]:
    """The training batches (bucketed, in the data seed's order) and their number in the
    training split."""
    tcfg = cfg.trainer
    train = task.load("train")
    if cfg.task.max_train_examples:
        train = train[: cfg.task.max_train_examples]
    buckets = (default_buckets(cfg.task.max_len) if tcfg.get("bucket_step") is None
               else linear_buckets(cfg.task.max_len, tcfg.bucket_step))  # fmt: skip
    batches = TrainBatches(encode(cfg, tok, task, train), tcfg.batch_size, data_seed(cfg), buckets,
                           tok.pad_id, sort_window=tcfg.get("sort_window", 0))  # fmt: skip
    return batches, len(train)


def total_steps(tcfg: DictConfig, steps_per_epoch: int) -> int:
    """Micro-steps of the run: ``trainer.max_steps``, else ``trainer.epochs`` of batches."""
    if tcfg.max_steps:
        return int(tcfg.max_steps)
    if tcfg.epochs:
        return max(int(math.ceil(tcfg.epochs * steps_per_epoch)), 1)
    raise ConfigError("set trainer.max_steps or trainer.epochs")


def validation_batches(cfg: DictConfig, task: Any, tok: Any, buckets: Any) -> list[dict]:
    """The held-out batches of lora_jax.train.validation (empty when trainer.val_examples=0)."""
    n = cfg.trainer.val_examples
    if not n:
        return []
    held_out = task.load("eval")[:n]
    if not held_out:
        return []
    return _held_out_batches(encode(cfg, tok, task, held_out), cfg.trainer.batch_size, buckets,
                             tok.pad_id)  # fmt: skip


def eval_items(cfg: DictConfig, task: Any) -> list:
    items = task.eval_groups(task.load("eval"))
    return items[: cfg.task.max_eval_items] if cfg.task.max_eval_items else items
