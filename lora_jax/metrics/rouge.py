"""SAMSum ROUGE-1/2/L F1 with Google's `rouge-score` (stemming on), as fractions.

Implementation and flags are part of the result, since ROUGE implementations differ in stemming
and sentence splitting (github google-research/google-research, rouge/README.md; the package
`rouge-score` on PyPI is that code):
rouge-score `RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)`, per-example F1
averaged over examples (no bootstrap aggregation), rougeL = summary-level LCS without sentence
splitting. With several references per example the best F1 over references is taken.
"""

from __future__ import annotations

from collections.abc import Sequence

ROUGE_FLAGS = "rouge-score RougeScorer(rouge1,rouge2,rougeL; use_stemmer=True); mean per-example F1"


ROUGE_KEYS = ("rouge1", "rouge2", "rougeL")


def rouge_item_scores(hyps: Sequence[str], refs: Sequence[Sequence[str]]) -> list[dict[str, float]]:
    """Per-example F1 of rouge1, rouge2, rougeL (the best over an example's references).
    hyps: [N]; refs: [N][n_refs_i]."""
    from rouge_score import rouge_scorer

    if len(hyps) != len(refs):
        raise ValueError(f"got {len(hyps)} hypotheses but {len(refs)} reference groups")
    scorer = rouge_scorer.RougeScorer(list(ROUGE_KEYS), use_stemmer=True)
    out = []
    for hyp, group in zip(hyps, refs):
        per_ref = [scorer.score(ref, hyp) for ref in group]
        out.append({key: float(max(s[key].fmeasure for s in per_ref)) for key in ROUGE_KEYS})
    return out


def rouge_scores(hyps: Sequence[str], refs: Sequence[Sequence[str]]) -> dict[str, float]:
    """Mean F1 of rouge1, rouge2, rougeL over examples (of :func:`rouge_item_scores`).
    hyps: [N]; refs: [N][n_refs_i]."""
    if len(hyps) != len(refs):
        raise ValueError(f"got {len(hyps)} hypotheses but {len(refs)} reference groups")
    if not hyps:
        raise ValueError("no hypotheses to score")
    items = rouge_item_scores(hyps, refs)
    return {key: sum(it[key] for it in items) / len(items) for key in ROUGE_KEYS}
