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


def rouge_scores(hyps: Sequence[str], refs: Sequence[Sequence[str]]) -> dict[str, float]:
    """Mean F1 of rouge1, rouge2, rougeL. hyps: [N]; refs: [N][n_refs_i]."""
    from rouge_score import rouge_scorer

    if len(hyps) != len(refs):
        raise ValueError(f"got {len(hyps)} hypotheses but {len(refs)} reference groups")
    if not hyps:
        raise ValueError("no hypotheses to score")
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    sums = {"rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0}
    for hyp, group in zip(hyps, refs):
        per_ref = [scorer.score(ref, hyp) for ref in group]
        for key in sums:
            sums[key] += max(s[key].fmeasure for s in per_ref)
    n = len(hyps)
    return {
        "rouge1": sums["rouge1"] / n,
        "rouge2": sums["rouge2"] / n,
        "rougeL": sums["rougeL"] / n,
    }
