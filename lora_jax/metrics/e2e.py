"""The E2E NLG Challenge scores (github tuetschek/e2e-metrics), as fractions like the scorer.

Keys: bleu, nist (mteval-v13a definitions, `mteval.py`), meteor, rouge_l, cider
(pycocoevalcap after PTB tokenization, `coco.py`). One hypothesis per distinct MR.
"""

from __future__ import annotations

from collections.abc import Sequence

from lora_jax.metrics.coco import coco_scores
from lora_jax.metrics.mteval import corpus_bleu, corpus_nist

E2E_KEYS = ("bleu", "nist", "meteor", "rouge_l", "cider")


def e2e_scores(
    hyps: Sequence[str],
    refs: Sequence[Sequence[str]],
    coco: bool = True,
    nist_mode: str = "pymteval",
) -> dict[str, float | None | str]:
    """All five E2E metrics. hyps: [N]; refs: [N][n_refs_i] (N distinct MRs).

    nist_mode: "pymteval" (the scorer's ``-p``, the LoRA repo's setting) or "mteval" (the
    scorer's default Perl mteval-v13a); see :mod:`lora_jax.metrics.mteval`.
    coco=False skips the Java metrics (meteor, rouge_l, cider are then None with a reason),
    e.g. for a quick validation pass during training.
    """
    if len(hyps) != len(refs):
        raise ValueError(
            f"got {len(hyps)} hypotheses but {len(refs)} MRs with references; "
            "the E2E scorer wants exactly one hypothesis per distinct MR, in order"
        )
    out: dict[str, float | None | str] = {
        "bleu": corpus_bleu(hyps, refs),
        "nist": corpus_nist(hyps, refs, mode=nist_mode),
    }
    if coco:
        out.update(coco_scores(hyps, refs))
    else:
        for key in ("meteor", "rouge_l", "cider"):
            out[key] = None
            out[f"{key}_unavailable"] = "skipped (coco=False)"
    return {k: out[k] for k in E2E_KEYS} | {k: v for k, v in out.items() if k not in E2E_KEYS}
