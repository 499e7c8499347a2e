"""Real E2E training batches for the step benchmark (``python -m lora_jax.bench --e2e DIR``):
the first ``steps`` steps of the offline recipe's data (the dev set, in seed 0's order, the
``plain`` format, ``max_len`` tokens), as padded rows (length buckets, one example per row) or
as packed rows (``data.packing``: lora_jax.tasks.batching.pack_examples). Both hold the same
examples per step, so their real-token rates compare directly."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lora_jax.errors import MissingFile
from lora_jax.tasks import get_task
from lora_jax.tasks.batching import PackedRowBatches, TrainBatches, default_buckets
from lora_jax.tasks.formatting import encode_example


def e2e_batches(tok: Any, data_dir: str, batch: int, max_len: int, steps: int,
                packing: bool, row_len: int | None = None,
                step_multiple: int | None = None) -> list[dict]:  # fmt: skip
    if not (Path(data_dir) / "devset.csv").is_file():
        raise MissingFile(f"--e2e {data_dir}: no devset.csv there; point it at the E2E data "
                          "folder (../shared/data/e2e here)")  # fmt: skip
    task = get_task("e2e", data_dir=data_dir, train_file="devset.csv",
                    eval_file="testset_w_refs.csv")  # fmt: skip
    enc = [encode_example(tok, ex, "plain", max_len, task) for ex in task.load("train")]
    if packing:
        batches = PackedRowBatches(
            enc,
            batch,
            seed=0,
            row_len=row_len or max_len,
            pad_id=tok.pad_id,
            step_multiple=step_multiple,
        )
    else:
        batches = TrainBatches(enc, batch, seed=0, buckets=default_buckets(max_len),
                               pad_id=tok.pad_id)  # fmt: skip
    return [batches.batch_at(s) for s in range(steps)]
