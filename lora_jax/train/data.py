"""The run's data, from its config: the task, the training batches and the held-out batches.

One source for every job of the engine (a pack shares one data order: lora_jax.run.packs)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf

from lora_jax.errors import ConfigError, MissingFile
from lora_jax.tasks import get_task
from lora_jax.tasks.batching import (
    PackedRowBatches,
    TrainBatches,
    default_buckets,
    linear_buckets,
)
from lora_jax.tasks.formatting import encode_example
from lora_jax.tasks.sample import write_e2e_sample
from lora_jax.train.validation import packed_batches
from lora_jax.train.validation import validation_batches as _held_out_batches

TASK_KEYS = ("dataset", "data_dir", "data_files", "train_file", "eval_file", "train_split",
             "eval_split", "validation_file", "validation_split", "revision")  # fmt: skip


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


def train_examples(cfg: DictConfig, task: Any) -> list:
    train = task.load("train")
    return train[: cfg.task.max_train_examples] if cfg.task.max_train_examples else train


def split_validation(cfg: DictConfig, task: Any, train: list) -> tuple[list, list, dict]:
    """``(validation examples, training examples, where validation came from)``; validation is
    never the eval (test) split.

    ``trainer.val_examples`` examples (0: no validation) from the task's own validation split
    when it has one distinct from the training data and the test split
    (:meth:`lora_jax.tasks.base.RowSource.validation_origin`: E2E's dev set, SAMSum's
    validation split), else held out of the training examples: whole groups of one source
    (one E2E MR with all its references) drawn in the order of a permutation seeded with the
    data seed, until at least ``val_examples`` examples are held out, and removed from
    training (the same slice for the same seed and training file; a pack shares it)."""
    n = int(cfg.trainer.val_examples or 0)
    if n <= 0:
        return [], train, {"split": None}
    origin = task.validation_origin() if hasattr(task, "validation_origin") else None
    if origin is not None:
        val = task.load("validation")[:n]
        return val, train, {"split": "validation", "source": origin, "examples": len(val)}
    seed = data_seed(cfg)
    counts: dict[str, int] = {}
    for ex in train:
        counts[ex.key] = counts.get(ex.key, 0) + 1
    keys = list(counts)
    chosen: set[str] = set()
    held = 0
    for i in np.random.default_rng(seed).permutation(len(keys)):
        if held >= n:
            break
        chosen.add(keys[i])
        held += counts[keys[i]]
    val = [ex for ex in train if ex.key in chosen]
    rest = [ex for ex in train if ex.key not in chosen]
    if not rest:
        raise ConfigError(
            f"trainer.val_examples={n} holds out all {len(train)} training examples for "
            "validation; lower it (or give the task a validation split)"
        )
    info = {"split": "train-holdout", "seed": seed, "examples": len(val), "sources": len(chosen),
            "of_train": len(train)}  # fmt: skip
    return val, rest, info


def packing(cfg: DictConfig) -> bool:
    """``data.packing``: true, false, or auto = on unless LoRA dropout is on (its random masks
    follow the token layout, so packed and padded runs would draw different ones)."""
    value = cfg.get("data", {}).get("packing", False)
    if value == "auto":
        return cfg.get("method", "lora") == "full" or not float(cfg.lora.dropout) > 0
    return bool(value)


def row_len(cfg: DictConfig) -> int:
    """Tokens per packed row: ``data.row_len``, else ``task.max_len`` (at least max_len: every
    example must fit a row)."""
    n = cfg.get("data", {}).get("row_len")
    if n is None:
        return int(cfg.task.max_len)
    if int(n) < int(cfg.task.max_len):
        raise ConfigError(f"data.row_len={n} is shorter than task.max_len={cfg.task.max_len}: "
                          "an example may not fit a row; use row_len >= max_len (or null)")  # fmt: skip
    return int(n)


def step_multiple(cfg: DictConfig) -> int | None:
    """``data.pack=step``: the row-length multiple; ``rows`` (default): None."""
    d = cfg.get("data", {})
    return int(d.get("step_multiple", 64)) if d.get("pack", "rows") == "step" else None


def row_multiple(cfg: DictConfig) -> int:
    """Packed rows per step are a multiple of the devices the batch is split over (the mesh's
    data x fsdp, -1 resolved against the devices)."""
    data, fsdp = int(cfg.mesh.data), int(cfg.mesh.fsdp)
    if data * fsdp == 1:
        return 1
    from lora_jax.train import sharding

    mesh = sharding.make_mesh(data, fsdp)
    return int(mesh.shape[sharding.DATA] * mesh.shape[sharding.FSDP])


def train_batches(
    cfg: DictConfig, tok: Any, task: Any, train: list, rows_of: int = 1
) -> TrainBatches:
    """The training batches in the data seed's order: packed rows (``data.packing``, rows a
    multiple of ``rows_of``), else padded rows bucketed by length."""
    tcfg = cfg.trainer
    if packing(cfg):
        if tcfg.get("sort_window", 0):
            raise ConfigError("trainer.sort_window reorders examples to pad less; with "
                              "data.packing there is no padding to save: drop one of them")  # fmt: skip
        return PackedRowBatches(encode(cfg, tok, task, train), tcfg.batch_size, data_seed(cfg),
                                row_len(cfg), tok.pad_id, rows_of, step_multiple(cfg))  # fmt: skip
    buckets = (default_buckets(cfg.task.max_len) if tcfg.get("bucket_step") is None
               else linear_buckets(cfg.task.max_len, tcfg.bucket_step))  # fmt: skip
    return TrainBatches(encode(cfg, tok, task, train), tcfg.batch_size, data_seed(cfg), buckets,
                        tok.pad_id, sort_window=tcfg.get("sort_window", 0))  # fmt: skip


def total_steps(tcfg: DictConfig, steps_per_epoch: int) -> int:
    """Micro-steps of the run: ``trainer.max_steps``, else ``trainer.epochs`` of batches."""
    if tcfg.max_steps:
        return int(tcfg.max_steps)
    if tcfg.epochs:
        return max(int(math.ceil(tcfg.epochs * steps_per_epoch)), 1)
    raise ConfigError("set trainer.max_steps or trainer.epochs")


def validation_batches(
    cfg: DictConfig, task: Any, tok: Any, buckets: Any, held_out: list, rows_of: int = 1
) -> list[dict]:
    """The validation examples (:func:`split_validation`), each exactly once, in padded batches
    or, with ``data.packing``, in packed rows."""
    if not held_out:
        return []
    encoded = encode(cfg, tok, task, held_out)
    if packing(cfg):
        return packed_batches(encoded, cfg.trainer.batch_size, row_len(cfg),
                              tok.pad_id, rows_of)  # fmt: skip
    return _held_out_batches(encoded, cfg.trainer.batch_size, buckets, tok.pad_id)


def eval_items(cfg: DictConfig, task: Any) -> list:
    items = task.eval_groups(task.load("eval"))
    return items[: cfg.task.max_eval_items] if cfg.task.max_eval_items else items
