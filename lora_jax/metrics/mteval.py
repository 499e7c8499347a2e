"""Corpus BLEU (4-gram) and NIST (5-gram) as defined by mteval-v13a, used by the E2E scorer.

Definitions follow NIST's `mteval-v13a.pl` as re-implemented in the official E2E scorer
(github tuetschek/e2e-metrics, `metrics/pymteval.py`, which the LoRA repo runs with `-p`):

- tokenization: mteval-v13a "basic" normalisation, lower-cased (case-insensitive scoring);
- BLEU: clipped n-gram matches against the max count over all references of a segment,
  summed over the corpus; effective reference length = per segment the reference closest in
  length to the hypothesis (ties -> the shorter); BP = exp(min(0, 1 - r/c));
  an n-gram order with zero matches is smoothed as in mteval-v13a (1 / (2^k * total));
- NIST: info(w1..wn) = log2(count(w1..wn-1) / count(w1..wn)) with counts over all
  references of the corpus (the 0-gram count is the total number of reference words);
  score = sum_n (sum of info over clipped matches / number of hypothesis n-grams) * BP,
  BP = exp(-beta * log(min(1, c / r_avg))^2) with beta = -ln(0.5) / ln(1.5)^2 (the penalty
  is 0.5 at 2/3 of the reference length). The reference length r has two definitions, both
  of the official scorer (``nist_mode``):
  - "pymteval" (default; the scorer's ``-p``, what the LoRA repo runs): r = sum over segments
    of that segment's mean reference length;
  - "mteval" (the scorer's default, Perl ``mteval-v13a-sig.pl``): the scorer writes reference
    set k with an empty segment where an MR has fewer than k references, and mteval's
    ``nist_score`` divides the total reference words by the mean number of non-empty
    references per segment: r = total reference words / (total references / N). The two agree
    when every segment has the same number of references.
  BLEU is the same in both modes: mteval's closest-length rule skips the empty references.

Two edge cases where pymteval and mteval-v13a disagree follow mteval-v13a here: a hypothesis
shorter than n contributes 0 (not a negative count) n-grams, and a zero-match order is
smoothed as above instead of by 1e-15. Neither happens on real E2E system outputs. Perl
mteval lower-cases ASCII letters only (``tr/[A-Z]/[a-z]/``), pymteval and this module all
letters; the E2E references hold no non-ASCII capital.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np

from lora_jax.errors import ConfigError

NIST_BETA = -math.log(0.5) / math.log(1.5) ** 2
NIST_MODES = ("pymteval", "mteval")

_PUNCT = re.compile(r"([\{-\~\[-\` -\&\(-\+\:-\@\/])")
_PERIOD_COMMA_AFTER_NONDIGIT = re.compile(r"([^0-9])([\.,])")
_PERIOD_COMMA_BEFORE_NONDIGIT = re.compile(r"([\.,])([^0-9])")
_DASH_AFTER_DIGIT = re.compile(r"([0-9])(-)")


def tokenize_13a(text: str, lowercase: bool = True) -> list[str]:
    """mteval-v13a `NormalizeText` (basic tokenization); returns the tokens."""
    text = text.replace("<skipped>", "").replace("-\n", "").replace("\n", " ")
    text = text.replace("&quot;", '"').replace("&amp;", "&")
    text = text.replace("&lt;", "<").replace("&gt;", ">")
    text = f" {text} "
    if lowercase:
        text = text.lower()
    text = _PUNCT.sub(r" \1 ", text)
    text = _PERIOD_COMMA_AFTER_NONDIGIT.sub(r"\1 \2 ", text)
    text = _PERIOD_COMMA_BEFORE_NONDIGIT.sub(r" \1 \2", text)
    text = _DASH_AFTER_DIGIT.sub(r"\1 \2 ", text)
    return text.split()


def _ngrams(tokens: Sequence[str], n: int) -> Counter:
    return Counter(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))


def _max_ref_counts(refs: Sequence[Sequence[str]], n: int) -> Counter:
    merged: Counter = Counter()
    for ref in refs:
        merged |= _ngrams(ref, n)  # `|` keeps the max count per n-gram
    return merged


def _check(hyps: Sequence[str], refs: Sequence[Sequence[str]]) -> None:
    if len(hyps) != len(refs):
        raise ValueError(
            f"got {len(hyps)} hypotheses but {len(refs)} reference groups; "
            "give exactly one hypothesis per source (E2E: per distinct MR)"
        )
    for i, group in enumerate(refs):
        if isinstance(group, str) or len(group) == 0:
            raise ValueError(f"reference group {i} must be a non-empty list of strings")


def bleu_stats(hyp: str, refs: Sequence[str], max_n: int = 4) -> list[int]:
    """One segment's BLEU sufficient statistics, ``[hyp_len, ref_len, matches_1..max_n,
    totals_1..max_n]`` (integers): the clipped n-gram matches against the max count over the
    references, the hypothesis n-gram counts, the hypothesis length and the effective reference
    length (the reference closest in length, ties -> the shorter), all after lower-cased 13a
    tokenization. Summed over segments they give :func:`corpus_bleu` through
    :func:`bleu_of_stats`."""
    if isinstance(refs, str) or len(refs) == 0:
        raise ValueError("a reference group must be a non-empty list of strings")
    h = tokenize_13a(hyp)
    rs = [tokenize_13a(r) for r in refs]
    matches, totals = [], []
    for n in range(1, max_n + 1):
        rc = _max_ref_counts(rs, n)
        matches.append(sum(min(c, rc[g]) for g, c in _ngrams(h, n).items()))
        totals.append(max(0, len(h) - n + 1))
    ref_len = len(min(rs, key=lambda r: (abs(len(r) - len(h)), len(r))))
    return [len(h), ref_len, *matches, *totals]


def bleu_of_stats(stats: Any) -> Any:
    """Corpus BLEU (a fraction) of summed :func:`bleu_stats` ``[..., 2 + 2·max_n]``, vectorized
    over leading axes (a float for one vector): mteval-v13a's formula, BP = exp(min(0, 1 − r/c)),
    an order with no hypothesis n-grams contributes log(1), the k-th order with zero matches
    contributes log(1 / (2^k · total)); 0 when the hypotheses are empty."""
    s = np.asarray(stats, dtype=float)
    max_n = (s.shape[-1] - 2) // 2
    if s.shape[-1] != 2 + 2 * max_n or max_n < 1:
        raise ValueError(f"BLEU statistics need 2 + 2*max_n values per row; got {s.shape[-1]}")
    hyp_len, ref_len = s[..., 0], s[..., 1]
    log_sum = np.zeros(s.shape[:-1])
    smooth = np.ones(s.shape[:-1])
    with np.errstate(divide="ignore", invalid="ignore"):
        for k in range(max_n):
            m, t = s[..., 2 + k], s[..., 2 + max_n + k]
            zero = (t > 0) & (m == 0)
            smooth = np.where(zero, 2.0 * smooth, smooth)
            term = np.where(zero, np.log(1.0 / (smooth * t)), np.log(m / t))
            log_sum = log_sum + np.where(t > 0, term, 0.0)
        bp = np.exp(np.minimum(0.0, 1.0 - ref_len / hyp_len))
        out = np.where(hyp_len > 0, bp * np.exp(log_sum / max_n), 0.0)
    return float(out) if out.ndim == 0 else out


def corpus_bleu(hyps: Sequence[str], refs: Sequence[Sequence[str]], max_n: int = 4) -> float:
    """Corpus BLEU as a fraction (0.704, not 70.4). hyps: [N]; refs: [N][n_refs_i].

    Computed as :func:`bleu_of_stats` of the summed per-segment :func:`bleu_stats`, so the
    per-item statistics a run stores (lora_jax.tasks.E2ETask.item_scores) reproduce it exactly."""
    _check(hyps, refs)
    total = np.zeros(2 + 2 * max_n, dtype=np.int64)
    for hyp, group in zip(hyps, refs):
        total += np.asarray(bleu_stats(hyp, group, max_n), dtype=np.int64)
    return bleu_of_stats(total)


def nist_length_penalty(hyp_len: float, ref_len: float) -> float:
    """exp(-beta * log(min(1, c/r))^2); 0.5 when c/r = 2/3."""
    ratio = hyp_len / ref_len if ref_len > 0 else 1.0
    if ratio >= 1:
        return 1.0
    if ratio <= 0:
        return 0.0
    return math.exp(-NIST_BETA * math.log(ratio) ** 2)


def corpus_nist(
    hyps: Sequence[str],
    refs: Sequence[Sequence[str]],
    max_n: int = 5,
    mode: str = "pymteval",
) -> float:
    """Corpus NIST (information-weighted n-gram precision, n <= 5). hyps: [N]; refs: [N][n_i].

    mode: "pymteval" (the E2E scorer's ``-p``) or "mteval" (its default Perl mode); they differ
    only in the reference length of the brevity penalty (module docstring)."""
    if mode not in NIST_MODES:
        raise ConfigError(f"unknown NIST mode {mode!r}; use one of {', '.join(NIST_MODES)}")
    _check(hyps, refs)
    ref_counts: list[Counter] = [Counter() for _ in range(max_n + 1)]  # index 0: 0-gram
    hits: list[list[Counter]] = [[] for _ in range(max_n + 1)]
    totals = [0] * (max_n + 1)
    avg_ref_len = 0.0
    hyp_len = n_refs = 0
    for hyp, group in zip(hyps, refs):
        h = tokenize_13a(hyp)
        rs = [tokenize_13a(r) for r in group]
        for n in range(1, max_n + 1):
            hc = _ngrams(h, n)
            rc = _max_ref_counts(rs, n)
            hits[n].append(Counter({g: min(c, rc[g]) for g, c in hc.items() if rc[g] > 0}))
            totals[n] += max(0, len(h) - n + 1)
            for r in rs:
                ref_counts[n].update(_ngrams(r, n))
        lens = [len(r) for r in rs]
        ref_counts[0][()] += sum(lens)
        avg_ref_len += sum(lens) / len(lens)
        n_refs += sum(1 for n in lens if n > 0)  # mteval counts non-empty reference segments
        hyp_len += len(h)

    def info(g: tuple[str, ...]) -> float:
        return math.log2(ref_counts[len(g) - 1][g[:-1]] / ref_counts[len(g)][g])

    score = 0.0
    for n in range(1, max_n + 1):
        gained = sum(info(g) * c for seg in hits[n] for g, c in seg.items())
        score += gained / max(totals[n], 1)
    if mode == "mteval":
        avg_ref_len = ref_counts[0][()] / (n_refs / len(hyps)) if n_refs else 0.0
    return score * nist_length_penalty(hyp_len, avg_ref_len)
