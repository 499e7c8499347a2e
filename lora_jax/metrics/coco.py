"""METEOR 1.5, ROUGE-L and CIDEr(-D) from pycocoevalcap, after its PTB tokenization (Java).

This mirrors the E2E scorer (github tuetschek/e2e-metrics, `measure_scores.py`), which builds
COCO-style dictionaries {id: [captions]} and runs pycocoevalcap's `PTBTokenizer` (Stanford
CoreNLP 3.4.1, lower-cased, punctuation removed), then `Meteor` (meteor-1.5.jar, `-l en
-norm`), `Rouge` (ROUGE-L, beta 1.2, max over references) and `Cider` (CIDEr-D: sigma 6,
clipping, IDF from this corpus's references). Every tool here is the reference
implementation; nothing is re-implemented. When Java (or the METEOR jar) cannot run, the
affected scores are reported as None with the reason, never replaced by another number.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence


def java_available() -> str | None:
    """None when `java` can be found, else the reason it cannot."""
    if shutil.which("java") is None:
        return "no `java` executable on PATH (install a JRE, e.g. apt-get install openjdk-17-jre)"
    return None


def ptb_tokenize(texts: dict[int, list[str]]) -> dict[int, list[str]]:
    """PTB-tokenize (one JVM start) {id: [sentence, ...]} -> same structure, tokens joined by ' '."""
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    # The Java tokenizer is run with -preserveLines; an empty line would shift every later
    # sentence, so empty strings are tokenized as a placeholder that is removed afterwards.
    placeholder = "xxemptyxx"
    coco = {k: [{"caption": s if s.strip() else placeholder} for s in v] for k, v in texts.items()}
    out = PTBTokenizer().tokenize(coco)
    return {k: ["" if s == placeholder else s for s in v] for k, v in out.items()}


def coco_scores(
    hyps: Sequence[str], refs: Sequence[Sequence[str]]
) -> dict[str, float | None | str]:
    """METEOR, ROUGE-L, CIDEr as fractions. hyps: [N]; refs: [N][n_refs_i].

    Returns keys meteor, rouge_l, cider; a key that could not be computed is None and a
    `<key>_unavailable` entry says why.
    """
    if len(hyps) != len(refs):
        raise ValueError(f"got {len(hyps)} hypotheses but {len(refs)} reference groups")
    reason = java_available()
    if reason is not None:
        out: dict[str, float | None | str] = {}
        for key in ("meteor", "rouge_l", "cider"):
            out[key] = None
            out[f"{key}_unavailable"] = f"PTB tokenization needs Java: {reason}"
        return out

    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    gts, res = _tokenized(hyps, refs)
    out = {}
    out["rouge_l"] = float(Rouge().compute_score(gts, res)[0])
    out["cider"] = float(Cider().compute_score(gts, res)[0])
    try:
        out["meteor"] = meteor_score(gts, res)
    except Exception as err:  # the JVM or the jar failed: say so, do not substitute a number
        out["meteor"] = None
        out["meteor_unavailable"] = f"METEOR 1.5 (Java) failed: {type(err).__name__}: {err}"
    return out


def _tokenized(
    hyps: Sequence[str], refs: Sequence[Sequence[str]]
) -> tuple[dict[int, list[str]], dict[int, list[str]]]:
    """PTB-tokenized ({i: refs}, {i: [hyp]}) in the COCO layout."""
    n = len(hyps)
    # One tokenizer run for both sides (tokenization is line by line, so this equals two runs).
    joint = {i: list(refs[i]) for i in range(n)}
    joint.update({n + i: [hyps[i]] for i in range(n)})
    tok = ptb_tokenize(joint)
    return {i: tok[i] for i in range(n)}, {i: tok[n + i] for i in range(n)}


def rouge_l_items(hyps: Sequence[str], refs: Sequence[Sequence[str]]) -> list[float] | None:
    """Per-item ROUGE-L (pycocoevalcap, after PTB tokenization, max over references) as
    fractions; their mean is :func:`coco_scores`' ``rouge_l``. None when Java cannot run."""
    if len(hyps) != len(refs):
        raise ValueError(f"got {len(hyps)} hypotheses but {len(refs)} reference groups")
    if java_available() is not None:
        return None
    from pycocoevalcap.rouge.rouge import Rouge

    gts, res = _tokenized(hyps, refs)
    _, per_item = Rouge().compute_score(gts, res)
    return [float(x) for x in per_item]


def meteor_score(gts: dict[int, list[str]], res: dict[int, list[str]]) -> float:
    """Corpus METEOR 1.5 over tokenized {id: refs} / {id: [hyp]} (pycocoevalcap's wrapper)."""
    from pycocoevalcap.meteor.meteor import Meteor

    scorer = Meteor()
    try:
        score, _ = scorer.compute_score(gts, res)
    finally:
        del scorer
    return float(score)
