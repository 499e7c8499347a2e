"""E2E NLG (Novikova et al. 2017): MR -> restaurant description; scored by the E2E scorer.

Hub: "tuetschek/e2e_nlg" (columns meaning_representation, human_reference; splits train,
validation, test). Local: the challenge CSVs (columns mr, ref; several refs per MR on
consecutive lines), e.g. data_dir=/work/shared/data/e2e, train_file="devset.csv" offline.
Format (LoRA repo, examples/NLG): context = MR, completion = " " + text (EOS around both).
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any, ClassVar

from lora_jax.errors import DataError
from lora_jax.metrics.coco import rouge_l_items
from lora_jax.metrics.e2e import e2e_scores
from lora_jax.metrics.mteval import bleu_of_stats, bleu_stats
from lora_jax.tasks.base import (
    EvalItem,
    Example,
    RowSource,
    group_by_key,
)

_COLUMNS = {"mr": ("mr", "meaning_representation"), "ref": ("ref", "human_reference")}


@dataclass
class E2ETask(RowSource):
    dataset: str | None = "tuetschek/e2e_nlg"
    train_file: str = "trainset.csv"
    eval_file: str = "testset_w_refs.csv"
    train_split: str = "train"
    eval_split: str = "test"
    validation_file: str | None = "devset.csv"  # the official dev set
    validation_split: str | None = "validation"
    coco_metrics: bool = True  # METEOR/ROUGE-L/CIDEr need Java
    nist_mode: str = "pymteval"  # the E2E scorer's -p (as the LoRA repo runs it) | "mteval"
    name: str = "e2e"
    main_metric: str = "bleu"
    instruction: str = (
        "Write a one-sentence restaurant description from this meaning representation."
    )
    item_metrics: ClassVar[tuple[str, ...]] = ("bleu", "rouge_l")
    corpus_metrics: ClassVar[dict[str, Callable[[Any], Any]]] = {"bleu": bleu_of_stats}

    def load(self, split: str) -> list[Example]:
        rows, cols, origin = self.rows(split, _COLUMNS)
        out = []
        for i, row in enumerate(rows):
            mr, ref = str(row[cols["mr"]] or "").strip(), str(row[cols["ref"]] or "").strip()
            if not mr or not ref:
                what = "meaning representation" if not mr else "reference"
                raise DataError(f"{origin}: row {i + 2} has an empty {what}; fix or drop that line")
            out.append(Example(source=mr, target=ref, key=mr))
        return out

    def eval_groups(self, examples: list[Example]) -> list[EvalItem]:
        return group_by_key(examples)

    def score(self, hyps: list[str], items: list[EvalItem]) -> dict[str, Any]:
        refs = [list(it.references) for it in items]
        return e2e_scores(hyps, refs, coco=self.coco_metrics, nist_mode=self.nist_mode)

    def item_scores(
        self, hyps: list[str], items: list[EvalItem], metrics: Collection[str] | None = None
    ) -> list[dict[str, Any]]:
        """Per MR: ``bleu``, the sentence-level sufficient statistics of the scorer's corpus BLEU
        ([hyp_len, ref_len, matches 1-4, totals 1-4] after its lower-cased 13a tokenization;
        their sum gives score()'s bleu exactly: lora_jax.metrics.mteval.bleu_of_stats), and
        ``rouge_l``, the item's ROUGE-L (score()'s rouge_l is their mean; left out when the
        COCO metrics are off or Java cannot run). NIST, METEOR and CIDEr weigh n-grams by
        corpus-wide statistics and have no per-item form here."""
        if len(hyps) != len(items):
            raise ValueError(f"got {len(hyps)} hypotheses for {len(items)} MRs")
        want = set(self.item_metrics if metrics is None else metrics)
        out: list[dict[str, Any]] = [{} for _ in hyps]
        if "bleu" in want:
            for o, h, it in zip(out, hyps, items):
                o["bleu"] = bleu_stats(h, it.references)
        if "rouge_l" in want and self.coco_metrics and hyps:
            per_item = rouge_l_items(hyps, [list(it.references) for it in items])
            for o, v in zip(out, per_item or ()):
                o["rouge_l"] = v
        return out

    def prompt(self, source: str) -> str:
        return source

    def postprocess(self, generated: str) -> str:
        return " ".join(generated.strip().split("\n\n")[0].split())
