"""WikiSQL (Zhong et al. 2017): question + table header -> SQL; logical-form and execution accuracy.

Hub: "Salesforce/wikisql" at revision "refs/convert/parquet" (the hub's parquet conversion: the
repo's main branch is a loading script, which `datasets` >= 4 does not run). Schema: question, table{header, types, rows,
...}, sql{sel, agg, conds{column_index, operator_index, condition}}. Local JSONL/parquet files
in that schema load through `data_files` / `data_dir`. The paper reports logical-form
accuracy on the validation split (LoRA paper App. C), our main metric.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any, ClassVar

from lora_jax.errors import DataError
from lora_jax.metrics.wikisql import (
    query_from_hub,
    query_to_text,
    wikisql_item_scores,
    wikisql_scores,
)
from lora_jax.tasks.base import (
    EvalItem,
    Example,
    RowSource,
)

_COLUMNS = {"question": ("question",), "table": ("table",), "sql": ("sql",)}


def wikisql_source(question: str, header: list[str]) -> str:
    """The model's input text: the column names, then the question."""
    return "Columns: " + " | ".join(header) + "\nQuestion: " + question.strip()


@dataclass
class WikiSQLTask(RowSource):
    dataset: str | None = "Salesforce/wikisql"
    revision: str | None = "refs/convert/parquet"  # the hub parquet conversion (a script repo)
    train_file: str = "train.jsonl"
    eval_file: str = "validation.jsonl"
    train_split: str = "train"
    eval_split: str = "validation"
    # the eval split is the validation split (LoRA paper App. C): validation is held out of train
    validation_file: str | None = "validation.jsonl"
    validation_split: str | None = "validation"
    name: str = "wikisql"
    main_metric: str = "lf_acc"
    instruction: str = (
        "Write the SQL query that answers the question over a table with these columns."
    )
    item_metrics: ClassVar[tuple[str, ...]] = ("lf_acc", "ex_acc")
    corpus_metrics: ClassVar[dict[str, Callable[[Any], Any]]] = {}

    def load(self, split: str) -> list[Example]:
        rows, cols, origin = self.rows(split, _COLUMNS)
        out = []
        for i, row in enumerate(rows):
            table, header = row["table"], list(row["table"].get("header") or [])
            if not header or "rows" not in table:
                raise DataError(f"{origin}: example {i} has a table without header/rows")
            try:
                query = query_from_hub(row["sql"])
                target = query_to_text(query, header)
            except (KeyError, TypeError, ValueError) as err:
                raise DataError(
                    f"{origin}: example {i} has a malformed sql field ({err}); expected "
                    "{sel, agg, conds: {column_index, operator_index, condition}}"
                ) from err
            source = wikisql_source(str(row["question"]), header)
            out.append(Example(source, target, key=f"{i}", extra={"table": table, "query": query}))
        return out

    def eval_groups(self, examples: list[Example]) -> list[EvalItem]:
        return [EvalItem(e.source, (e.target,), dict(e.extra)) for e in examples]

    def score(self, hyps: list[str], items: list[EvalItem]) -> dict[str, Any]:
        return wikisql_scores(
            hyps, [it.extra["query"] for it in items], [it.extra["table"] for it in items]
        )

    def item_scores(
        self, hyps: list[str], items: list[EvalItem], metrics: Collection[str] | None = None
    ) -> list[dict[str, Any]]:
        """Per example: ``lf_acc`` (logical-form match) and ``ex_acc`` (execution match), 1.0
        or 0.0; score() reports their means."""
        scores = wikisql_item_scores(
            hyps, [it.extra["query"] for it in items], [it.extra["table"] for it in items]
        )
        want = set(self.item_metrics if metrics is None else metrics)
        return [{k: v for k, v in s.items() if k in want} for s in scores]

    def prompt(self, source: str) -> str:
        return source

    def postprocess(self, generated: str) -> str:
        lines = generated.strip().splitlines()
        return lines[0].strip() if lines else ""
