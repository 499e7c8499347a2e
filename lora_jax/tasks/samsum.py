"""SAMSum (Gliwa et al. 2019): dialogue -> summary; ROUGE-1/2/L F1 (rouge-score, stemming).

Hub: "Samsung/samsum" (columns id, dialogue, summary; 14,732 train / 819 test). Local JSON,
JSONL, CSV or parquet files with those columns load through `data_files` / `data_dir`.
Context = utterances joined by "\\n", then "\\n\\n" (Hu et al. 2021, arXiv 2106.09685, App. C;
the dataset: Gliwa et al. 2019, arXiv 1911.12237).
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any, ClassVar

from lora_jax.errors import DataError
from lora_jax.metrics.rouge import ROUGE_FLAGS, ROUGE_KEYS, rouge_item_scores, rouge_scores
from lora_jax.tasks.base import (
    EvalItem,
    Example,
    RowSource,
)

_COLUMNS = {"dialogue": ("dialogue",), "summary": ("summary",)}


def join_utterances(dialogue: str) -> str:
    """Normalise line breaks ("\\r\\n" in the release) to one utterance per "\\n" line."""
    return "\n".join(line.strip() for line in dialogue.splitlines() if line.strip())


@dataclass
class SAMSumTask(RowSource):
    dataset: str | None = "Samsung/samsum"
    revision: str | None = "refs/convert/parquet"  # the hub parquet conversion (a script repo)
    train_file: str = "train.jsonl"
    eval_file: str = "test.jsonl"
    train_split: str = "train"
    eval_split: str = "test"
    validation_file: str | None = "validation.jsonl"
    validation_split: str | None = "validation"
    name: str = "samsum"
    main_metric: str = "rougeL"
    instruction: str = "Summarize this dialogue."
    item_metrics: ClassVar[tuple[str, ...]] = ROUGE_KEYS
    corpus_metrics: ClassVar[dict[str, Callable[[Any], Any]]] = {}

    def load(self, split: str) -> list[Example]:
        rows, cols, origin = self.rows(split, _COLUMNS)
        out = []
        for i, row in enumerate(rows):
            dialogue = join_utterances(str(row["dialogue"] or ""))
            summary = " ".join(str(row["summary"] or "").split())
            if not dialogue or not summary:
                what = "dialogue" if not dialogue else "summary"
                raise DataError(f"{origin}: example {i} has an empty {what}; fix or drop it")
            key = str(row.get("id", i))
            out.append(Example(dialogue, summary, key=key, extra={"id": key}))
        return out

    def eval_groups(self, examples: list[Example]) -> list[EvalItem]:
        return [EvalItem(e.source, (e.target,), dict(e.extra)) for e in examples]

    def score(self, hyps: list[str], items: list[EvalItem]) -> dict[str, Any]:
        out: dict[str, Any] = dict(rouge_scores(hyps, [list(it.references) for it in items]))
        out["rouge_impl"] = ROUGE_FLAGS
        return out

    def item_scores(
        self, hyps: list[str], items: list[EvalItem], metrics: Collection[str] | None = None
    ) -> list[dict[str, Any]]:
        """Per example: ROUGE-1/2/L F1 (rouge1, rouge2, rougeL); score() reports their means."""
        scores = rouge_item_scores(hyps, [list(it.references) for it in items])
        want = set(self.item_metrics if metrics is None else metrics)
        return [{k: v for k, v in s.items() if k in want} for s in scores]

    def prompt(self, source: str) -> str:
        return source + "\n\n"

    def postprocess(self, generated: str) -> str:
        return " ".join(generated.strip().split("\n\n")[0].split())
