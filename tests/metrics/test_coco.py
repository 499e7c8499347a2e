"""pycocoevalcap metrics (Java): one call, checked against hand-computed ROUGE-L / CIDEr-D."""

import math
import shutil
from collections import Counter

import pytest

from lora_jax.metrics.e2e import e2e_scores

pytestmark = pytest.mark.skipif(shutil.which("java") is None, reason="needs Java")


def _lcs(c, r):
    m = [[0] * (len(r) + 1) for _ in range(len(c) + 1)]
    for i in range(len(c)):
        for j in range(len(r)):
            m[i + 1][j + 1] = m[i][j] + 1 if c[i] == r[j] else max(m[i][j + 1], m[i + 1][j])
    return m[-1][-1]


def _cider_d(hyps, refs, n_max=4, sigma=6.0):
    # CIDEr-D (Vedantam et al. 2015 as in pycocoevalcap): tf-idf n-gram vectors, idf over
    # the references of this corpus, clipped hyp counts, Gaussian length penalty, x10.
    def grams(ws, n):
        return Counter(tuple(ws[i : i + n]) for i in range(len(ws) - n + 1))

    df = Counter()
    for group in refs:
        df.update({g for r in group for n in range(1, n_max + 1) for g in grams(r.split(), n)})
    log_n = math.log(len(refs))
    total = 0.0
    for hyp, group in zip(hyps, refs):
        h = hyp.split()
        score = 0.0
        for n in range(1, n_max + 1):
            vh = {g: c * (log_n - math.log(max(1.0, df[g]))) for g, c in grams(h, n).items()}
            for ref in group:
                r = ref.split()
                vr = {g: c * (log_n - math.log(max(1.0, df[g]))) for g, c in grams(r, n).items()}
                dot = sum(min(vh[g], vr[g]) * vr[g] for g in vh if g in vr)
                nh = math.sqrt(sum(v * v for v in vh.values()))
                nr = math.sqrt(sum(v * v for v in vr.values()))
                sim = dot / (nh * nr) if nh and nr else 0.0
                score += sim * math.exp(-((len(h) - len(r)) ** 2) / (2 * sigma**2))
        total += score / n_max / len(group) * 10.0
    return total / len(hyps)


def test_e2e_scores_against_hand_computed_values():
    # Lower-case, punctuation-free text: PTB tokenization leaves it unchanged.
    hyps = [
        "the eagle is a cheap coffee shop",
        "zizzi is a pub near the river",
        "blue spice serves food",
    ]
    refs = [
        ["the eagle is a coffee shop with low prices", "cheap coffee shop the eagle"],
        ["zizzi is a pub by the river"],
        ["blue spice is an italian place", "at blue spice they serve italian food"],
    ]
    out = e2e_scores(hyps, refs)
    assert set(out) >= {"bleu", "nist", "meteor", "rouge_l", "cider"}
    rouge = sum(_rouge_max(h, g) for h, g in zip(hyps, refs)) / len(hyps)
    assert out["rouge_l"] == pytest.approx(rouge, rel=1e-9)
    assert out["cider"] == pytest.approx(_cider_d(hyps, refs), rel=1e-6)
    assert out["meteor"] is not None and 0.2 < out["meteor"] < 0.9


def _rouge_max(hyp, group, beta=1.2):
    # pycocoevalcap ROUGE-L: LCS precision and recall, max of each over the references,
    # then F = (1 + b^2) P R / (R + b^2 P) with b = 1.2.
    c = hyp.split()
    p = max(_lcs(c, r.split()) / len(c) for r in group)
    r = max(_lcs(c, r.split()) / len(r.split()) for r in group)
    return 0.0 if p == 0 or r == 0 else (1 + beta**2) * p * r / (r + beta**2 * p)
