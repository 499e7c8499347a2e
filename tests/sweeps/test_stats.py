"""The report's statistics: the Student-t interval of a mean over seeds and the paired
bootstrap of a difference over test items, against closed-form cases, an independent
implementation (scipy / a plain loop), and sacrebleu's corpus BLEU of a resampled corpus."""

from __future__ import annotations

import math

import numpy as np
import pytest

from lora_jax.report.compare import bleu_score, bleu_stats
from lora_jax.report.stats import mean_score, paired_bootstrap, t_cdf, t_interval, t_quantile


def test_t_quantile_and_cdf_equal_scipy():
    from scipy import stats

    for df in [*range(1, 41), 60, 120, 500]:
        for p in (0.6, 0.9, 0.95, 0.975, 0.995, 0.9995):
            assert t_quantile(p, df) == pytest.approx(stats.t.ppf(p, df), rel=1e-10)
            assert t_quantile(1 - p, df) == pytest.approx(stats.t.ppf(1 - p, df), rel=1e-10)
        for x in (-7.5, -1.0, 0.0, 0.3, 2.0, 40.0):
            assert t_cdf(x, df) == pytest.approx(stats.t.cdf(x, df), abs=1e-14)
    # Printed tables (e.g. NIST/SEMATECH e-Handbook 1.3.6.7.2, upper 0.025 critical values):
    # df 1 -> 12.706, 2 -> 4.303, 4 -> 2.776, 9 -> 2.262, 30 -> 2.042; df 1 exactly tan(0.475π).
    for df, value in [(1, 12.706), (2, 4.303), (4, 2.776), (9, 2.262), (30, 2.042)]:
        assert t_quantile(0.975, df) == pytest.approx(value, abs=5e-4)
    assert t_quantile(0.975, 1) == pytest.approx(math.tan(0.475 * math.pi), rel=1e-12)
    assert t_quantile(0.975, 2) == pytest.approx(math.sqrt(2 / (1 - 0.95**2) - 2), rel=1e-12)
    assert t_quantile(0.5, 7) == 0.0


def test_t_interval_equals_scipy_t_interval():
    from scipy import stats

    cases = [[61.2, 63.0, 64.1], [70.38, 69.57], [0.704, 0.701, 0.707, 0.699, 0.71],
             list(np.random.default_rng(1).normal(5.0, 2.0, size=12))]  # fmt: skip
    for values in cases:
        v = np.asarray(values)
        ref = stats.t.interval(0.95, v.size - 1, loc=v.mean(), scale=stats.sem(v))
        assert t_interval(values) == pytest.approx(ref, rel=1e-12)
        ref90 = stats.t.interval(0.9, v.size - 1, loc=v.mean(), scale=stats.sem(v))
        assert t_interval(values, level=0.9) == pytest.approx(ref90, rel=1e-12)
    # By hand, n = 3: mean 62.7667, s² = (1.5667² + 0.2333² + 1.3333²)/2 = 2.14333,
    # s = 1.464013, t_{0.975, 2} = 4.302653 -> ± 4.302653·1.464013/√3 = 3.63681
    lo, hi = t_interval([61.2, 63.0, 64.1])
    assert (lo + hi) / 2 == pytest.approx(62.766667, abs=1e-6)
    assert (hi - lo) / 2 == pytest.approx(3.63681, abs=1e-5)
    assert t_interval([3.0, 3.0, 3.0]) == (3.0, 3.0)  # no spread: the interval is the point
    assert t_interval([1.0]) is None  # n = 1: no interval


def _as_stats(scores: np.ndarray) -> np.ndarray:
    """[S, N] per-item scores -> [S, N, 2] statistics of mean_score."""
    return np.stack([scores, np.ones_like(scores)], axis=-1)


def test_paired_bootstrap_closed_forms():
    x = np.random.default_rng(2).uniform(size=(3, 50))
    same = paired_bootstrap(_as_stats(x), _as_stats(x), mean_score, paired_seeds=True, n_boot=500)
    assert same.delta == 0.0 and same.ci == (0.0, 0.0) and same.p_value == 1.0
    # A = B + c on every item of every seed: every replicate's difference is exactly c.
    shifted = paired_bootstrap(_as_stats(x + 0.1), _as_stats(x), mean_score, True, n_boot=500)
    assert shifted.delta == pytest.approx(0.1)
    assert shifted.ci == pytest.approx((0.1, 0.1))
    assert shifted.p_value == pytest.approx(1 / 501)  # the smallest p with 500 replicates
    # One seed, iid per-item differences d ~ N(μ, σ²): CI ≈ mean(d) ± 1.96·sd(d)/√n.
    rng = np.random.default_rng(3)
    b = rng.uniform(size=(1, 2000))
    a = b + rng.normal(0.02, 0.2, size=b.shape)
    res = paired_bootstrap(_as_stats(a), _as_stats(b), mean_score, True, n_boot=4000)
    d = (a - b)[0]
    half = 1.959964 * d.std() / np.sqrt(d.size)
    assert res.ci == pytest.approx((d.mean() - half, d.mean() + half), abs=0.06 * half)
    z = d.mean() / (d.std() / np.sqrt(d.size))  # normal-theory two-sided p for comparison
    from scipy.stats import norm

    assert res.p_value == pytest.approx(2 * norm.sf(abs(z)), abs=0.01)


def test_paired_bootstrap_fixed_seed_matches_a_plain_loop():
    """The documented RNG protocol, implemented naively (loop over replicates, unpaired seeds)."""
    rng = np.random.default_rng(4)
    a, b = rng.uniform(size=(3, 7)), rng.uniform(size=(2, 7))
    n_boot, seed = 300, 11
    res = paired_bootstrap(_as_stats(a), _as_stats(b), mean_score, False, n_boot=n_boot, seed=seed)
    r = np.random.default_rng(seed)
    items = r.integers(0, 7, size=(n_boot, 7))
    sa, sb = r.integers(0, 3, size=(n_boot, 3)), r.integers(0, 2, size=(n_boot, 2))
    d = np.array([
        np.mean([a[s, items[i]].mean() for s in sa[i]]) - np.mean([b[s, items[i]].mean() for s in sb[i]])
        for i in range(n_boot)
    ])  # fmt: skip
    observed = a.mean(axis=1).mean() - b.mean(axis=1).mean()
    assert res.delta == pytest.approx(observed, rel=1e-12)
    assert res.ci == pytest.approx(tuple(np.percentile(d, [2.5, 97.5])), rel=1e-12)
    p = (1 + np.sum(np.abs(d - d.mean()) >= abs(observed))) / (1 + n_boot)
    assert res.p_value == pytest.approx(p)


def test_bleu_resample_equals_sacrebleu_on_the_resampled_corpus():
    """Summing per-item statistics of resampled items = corpus BLEU recomputed by sacrebleu on
    the resampled corpus (variable number of references per item)."""
    import sacrebleu

    hyps = ["the cat sat on the mat", "a dog runs in the park today", "hello world", "it is fine"]
    refs = [["the cat sat on a mat", "a cat on the mat"], ["the dog runs in a park"],
            ["hello there world", "hello world !", "hi world"], ["it is fine ."]]  # fmt: skip
    stats = bleu_stats(hyps, refs)
    idx = [2, 0, 0, 3, 1, 2]
    width = 3
    streams = [[refs[i][j] if j < len(refs[i]) else None for i in idx] for j in range(width)]
    expected = sacrebleu.corpus_bleu([hyps[i] for i in idx], streams).score
    assert float(bleu_score(stats[idx].sum(0))) == pytest.approx(expected, rel=1e-9)
    full = sacrebleu.corpus_bleu(hyps, [[r[j] if j < len(r) else None for r in refs]
                                        for j in range(width)]).score  # fmt: skip
    assert float(bleu_score(stats.sum(0))) == pytest.approx(full, rel=1e-9)
