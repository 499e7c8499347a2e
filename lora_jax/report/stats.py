"""Statistics of the report: mean ± a Student-t interval over seeds per cell, and the paired
bootstrap over test items and seeds for ``--compare``.

Intervals over seeds: a handful of seeds (2-5) is too few for a bootstrap of the mean (its
percentile interval is too narrow at small n; from 3 values it never reaches past the extreme
ones), so a cell's 95% interval is the Student-t one, mean ± t_{0.975, n−1}·s/√n with s the
sample std (ddof=1); none for n = 1. The t quantile is computed here (scipy is a test-only
dependency) from the closed-form t CDF of integer degrees of freedom (Abramowitz & Stegun
26.7.3-4), inverted by bisection; tests/sweeps/test_stats.py checks it against scipy.

The paired bootstrap (Koehn 2004, "Statistical significance tests for machine translation
evaluation"; sacrebleu's ``--paired-bs``) resamples eval items, hundreds of them: each replicate
resamples the test items with replacement (the same items for both configurations) and the seeds
with replacement (jointly when both configurations ran the same seeds, else independently),
recomputes the corpus metric of every sampled seed from its per-item sufficient statistics
(corpus BLEU is recomputed, not averaged from sentence scores), averages over the sampled seeds,
and takes A − B. The interval is the 2.5/97.5 percentiles of the replicates; the two-sided
p-value tests "no difference" by centring the replicates:
p = (1 + #{|d_b − mean(d)| ≥ |d_obs|}) / (1 + B).

A run-level metric (validation loss) has no items to resample: ``paired_t`` is the paired t-test
of its per-seed differences (the seeds share their data, the validation slice included).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

N_BOOT = 10_000
SEED = 0
LOWER_IS_BETTER = ("loss", "ppl", "perplexity")


def lower_is_better(metric: str) -> bool:
    """The direction of a metric: lower is better for names with loss/ppl/perplexity."""
    return any(word in metric.lower() for word in LOWER_IS_BETTER)


def mean_std(values: Sequence[float]) -> tuple[float, float | None]:
    """Mean and sample std (ddof=1); std None for one value."""
    v = np.asarray(values, dtype=float)
    return float(v.mean()), (float(v.std(ddof=1)) if v.size > 1 else None)


def t_cdf(t: float, df: int) -> float:
    """P(T ≤ t) for Student's t with integer ``df`` ≥ 1, in closed form (A&S 26.7.3-4): with
    θ = atan(t/√df), A = P(|T| ≤ |t|) is (2/π)·(θ + sinθ·cosθ·Σ_{k<(df−1)/2} c_k cos^{2k}θ)
    for odd df (c_0 = 1, c_k = c_{k−1}·2k/(2k+1)) and sinθ·Σ_{k<df/2} d_k cos^{2k}θ for even
    df (d_0 = 1, d_k = d_{k−1}·(2k−1)/(2k))."""
    if not (isinstance(df, int) and df >= 1):
        raise ValueError(f"df must be an integer >= 1; got {df!r}")
    theta = math.atan(abs(t) / math.sqrt(df))
    s, c2 = math.sin(theta), math.cos(theta) ** 2
    term = total = 1.0
    if df % 2:
        for k in range(1, (df - 1) // 2):
            term *= c2 * 2 * k / (2 * k + 1)
            total += term
        a = 2 / math.pi * (theta + (s * math.cos(theta) * total if df > 1 else 0.0))
    else:
        for k in range(1, df // 2):
            term *= c2 * (2 * k - 1) / (2 * k)
            total += term
        a = s * total
    return 0.5 + math.copysign(0.5 * a, t)


def t_quantile(p: float, df: int) -> float:
    """The p-quantile of Student's t with integer ``df`` (t_cdf inverted by bisection to the
    last bit of a double)."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"p must be in (0, 1); got {p!r}")
    if p == 0.5:
        return 0.0
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    lo, hi = 0.0, 1.0
    while t_cdf(hi, df) < p:
        lo, hi = hi, 2.0 * hi
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if mid in (lo, hi):
            break
        lo, hi = (mid, hi) if t_cdf(mid, df) < p else (lo, mid)
    return 0.5 * (lo + hi)


def t_interval(values: Sequence[float], level: float = 0.95) -> tuple[float, float] | None:
    """Student-t interval of the mean of ``values`` (seeds): mean ± t_{(1+level)/2, n−1}·s/√n,
    s the sample std (ddof=1). None for fewer than 2 values."""
    v = np.asarray(values, dtype=float)
    if v.size < 2:
        return None
    half = t_quantile(0.5 * (1.0 + level), v.size - 1) * float(v.std(ddof=1)) / math.sqrt(v.size)
    mean = float(v.mean())
    return mean - half, mean + half


def paired_t(
    a: Sequence[float], b: Sequence[float], level: float = 0.95
) -> tuple[float, tuple[float, float], float]:
    """The paired t-test of A − B over seeds (``a[i]``, ``b[i]`` the same seed's values): the
    mean difference, its Student-t interval (t_interval of the differences) and the two-sided
    p-value 2·(1 − F_{n−1}(|t|)), t = mean / (s/√n). Needs n ≥ 2 and differences that vary."""
    d = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    if d.ndim != 1 or d.size < 2:
        raise ValueError(f"a paired t-test needs at least 2 seeds run by both; got {d.size}")
    mean, sd = float(d.mean()), float(d.std(ddof=1))
    if sd == 0.0:
        raise ValueError("the per-seed differences are all equal: no spread to test against")
    ci = t_interval(d, level)
    t = mean / (sd / math.sqrt(d.size))
    return mean, ci, 2.0 * (1.0 - t_cdf(abs(t), d.size - 1))


@dataclass(frozen=True)
class PairedResult:
    delta: float  # observed mean-over-seeds metric of A minus that of B
    ci: tuple[float, float]
    p_value: float
    n_items: int
    seeds_a: int
    seeds_b: int
    paired_seeds: bool
    n_boot: int


def paired_bootstrap(
    stats_a: np.ndarray,
    stats_b: np.ndarray,
    score: Callable[[np.ndarray], np.ndarray],
    paired_seeds: bool,
    level: float = 0.95,
    n_boot: int = N_BOOT,
    seed: int = SEED,
) -> PairedResult:
    """Paired bootstrap of A − B over test items and seeds (module docstring).

    stats_a: [S_a, N, K], stats_b: [S_b, N, K] per-seed, per-item sufficient statistics (the
    same N items in the same order); ``score(summed stats [..., K]) -> [...]`` the corpus metric
    of summed statistics. paired_seeds: A's seed i and B's seed i are the same seed (S_a == S_b).
    RNG protocol (for reproducibility): one ``default_rng(seed)``; draws in this order: item
    indices [n_boot, N], A's seed indices [n_boot, S_a], then B's [n_boot, S_b] unless paired.
    """
    stats_a, stats_b = np.asarray(stats_a, float), np.asarray(stats_b, float)
    if stats_a.shape[1:] != stats_b.shape[1:]:
        raise ValueError(
            f"A and B must hold the same test items: per-item stats {stats_a.shape[1:]} vs "
            f"{stats_b.shape[1:]} (same eval set, same task.max_eval_items?)"
        )
    if paired_seeds and stats_a.shape[0] != stats_b.shape[0]:
        raise ValueError("paired seeds need the same number of seeds in A and B")
    n = stats_a.shape[1]
    rng = np.random.default_rng(seed)
    items = rng.integers(0, n, size=(n_boot, n))
    counts = np.zeros((n_boot, n))
    np.add.at(counts, (np.arange(n_boot)[:, None], items), 1.0)
    seeds_a = rng.integers(0, stats_a.shape[0], size=(n_boot, stats_a.shape[0]))
    seeds_b = (
        seeds_a
        if paired_seeds
        else rng.integers(0, stats_b.shape[0], size=(n_boot, stats_b.shape[0]))
    )

    def replicates(stats: np.ndarray, seeds: np.ndarray) -> np.ndarray:
        per_seed = score(np.einsum("bn,snk->sbk", counts, stats))  # [S, B]
        return np.take_along_axis(per_seed.T, seeds, axis=1).mean(axis=1)  # [B]

    d = replicates(stats_a, seeds_a) - replicates(stats_b, seeds_b)
    observed = float(score(stats_a.sum(1)).mean() - score(stats_b.sum(1)).mean())
    lo, hi = np.percentile(d, [50 * (1 - level), 50 * (1 + level)])
    extreme = np.abs(d - d.mean()) >= abs(observed) - 1e-12 * max(1.0, abs(observed))
    p = (1 + int(extreme.sum())) / (1 + n_boot)
    return PairedResult(observed, (float(lo), float(hi)), p, n, stats_a.shape[0],
                        stats_b.shape[0], paired_seeds, n_boot)  # fmt: skip


def mean_score(stats: np.ndarray) -> np.ndarray:
    """Score of summed [score, 1] statistics: the mean of per-item scores."""
    return stats[..., 0] / np.maximum(stats[..., 1], 1.0)
