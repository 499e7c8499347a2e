"""Statistics of the report: mean ± std over seeds, a percentile bootstrap interval per cell,
and the paired bootstrap over test items and seeds for ``--compare``.

The paired bootstrap (Koehn 2004, "Statistical significance tests for machine translation
evaluation"; sacrebleu's ``--paired-bs``): each replicate resamples the test items with
replacement (the same items for both configurations) and the seeds with replacement (jointly
when both configurations ran the same seeds, else independently), recomputes the corpus metric
of every sampled seed from its per-item sufficient statistics (corpus BLEU is recomputed, not
averaged from sentence scores), averages over the sampled seeds, and takes A − B. The interval
is the 2.5/97.5 percentiles of the replicates; the two-sided p-value tests "no difference" by
centring the replicates: p = (1 + #{|d_b − mean(d)| ≥ |d_obs|}) / (1 + B).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

N_BOOT = 10_000
SEED = 0


def mean_std(values: Sequence[float]) -> tuple[float, float | None]:
    """Mean and sample std (ddof=1); std None for one value."""
    v = np.asarray(values, dtype=float)
    return float(v.mean()), (float(v.std(ddof=1)) if v.size > 1 else None)


def bootstrap_ci(
    values: Sequence[float], level: float = 0.95, n_boot: int = N_BOOT, seed: int = SEED
) -> tuple[float, float] | None:
    """Percentile bootstrap interval of the mean of ``values`` (None for fewer than 2)."""
    v = np.asarray(values, dtype=float)
    if v.size < 2:
        return None
    rng = np.random.default_rng(seed)
    means = v[rng.integers(0, v.size, size=(n_boot, v.size))].mean(axis=1)
    lo, hi = np.percentile(means, [50 * (1 - level), 50 * (1 + level)])
    return float(lo), float(hi)


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
