"""``python -m lora_jax.report DIR --compare A B``: the paired bootstrap over test items and seeds
of the difference between two configurations (lora_jax.report.stats.paired_bootstrap).

A and B select runs by their sweep key, as whitespace-separated ``axis=value`` pairs, e.g.
``--compare "targets=up,down r=8" "targets=q,k,v,o r=2"``; each must select runs that differ
only in their seed. Per-item data: each run's ``items_eval.jsonl`` (its final eval's hypothesis
and references per test item, written by training). Metrics:

- ``bleu``: corpus BLEU recomputed on every resample from per-item sufficient statistics
  (sacrebleu BLEU, 13a tokenization, exp smoothing; 0-100). It can differ slightly from the
  run's stored E2E-scorer BLEU; the test compares A and B under the same scorer.
- any other name: the mean of per-item scores stored under ``scores`` in items_eval.jsonl.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lora_jax.report.aggregate import cell_differences, describe_differences
from lora_jax.report.collect import ReportError, Run, norm_value, target_label
from lora_jax.report.stats import N_BOOT, SEED, PairedResult, mean_score, paired_bootstrap
from lora_jax.train import record


def parse_spec(spec: str) -> dict[str, Any]:
    """ "targets=q,v r=4" -> {"targets": "q,v", "r": 4}."""
    out: dict[str, Any] = {}
    for part in shlex.split(spec):
        key, sep, value = part.partition("=")
        if not sep:
            raise ReportError(f"--compare spec {spec!r}: {part!r} is not axis=value")
        out[key] = target_label(value) if key == "targets" else norm_value(value)
    if not out:
        raise ReportError('--compare needs two non-empty specs such as "targets=q,v r=4"')
    return out


def select(runs: Sequence[Run], spec: dict[str, Any]) -> list[Run]:
    """The successful runs whose sweep key matches ``spec``, ordered by seed; they must differ
    only in their seed."""
    hit = [r for r in runs if r.ok and all(r.sweep.get(k) == v for k, v in spec.items())]
    where = " ".join(f"{k}={v}" for k, v in spec.items())
    if not hit:
        seen = {k: sorted({str(r.sweep.get(k)) for r in runs if r.ok}) for k in spec}
        raise ReportError(f"--compare {where!r} selects no successful run; values present: {seen}")
    diffs = cell_differences(hit)
    if diffs:
        raise ReportError(describe_differences(f"--compare {where!r}", diffs) +
                          "; add axes to the spec so that only seeds differ")  # fmt: skip
    seeds = [r.sweep.get("seed") for r in hit]
    if len(set(seeds)) != len(seeds):
        raise ReportError(f"--compare {where!r} selects several runs per seed {seeds}; narrow it")
    return sorted(hit, key=lambda r: (r.sweep.get("seed") is None, r.sweep.get("seed")))


def bleu_stats(hyps: Sequence[str], refs: Sequence[Sequence[str]]) -> np.ndarray:
    """Per-item sacrebleu BLEU sufficient statistics [N, 10]: hyp len, ref len, correct 1-4,
    total 1-4 (a variable number of references per item)."""
    from sacrebleu.metrics import BLEU

    width = max(len(r) for r in refs)
    streams = [[r[j] if j < len(r) else None for r in refs] for j in range(width)]
    return np.asarray(BLEU()._extract_corpus_statistics(list(hyps), streams), dtype=float)


def bleu_score(stats: np.ndarray) -> np.ndarray:
    """Corpus BLEU (0-100) of summed statistics [..., 10] (sacrebleu's own formula)."""
    from sacrebleu.metrics import BLEU

    flat = stats.reshape(-1, stats.shape[-1])
    out = [BLEU.compute_bleu(correct=list(s[2:6]), total=list(s[6:10]), sys_len=int(s[0]),
                             ref_len=int(s[1]), smooth_method="exp").score for s in flat]  # fmt: skip
    return np.asarray(out).reshape(stats.shape[:-1])


def item_stats(run: Run, metric: str) -> np.ndarray:
    """[N, K] per-item statistics of ``metric`` from the run's items_eval.jsonl."""
    run_dir = run.extra.get("dir")
    path = Path(run_dir or ".") / record.ITEMS
    if not run_dir or not path.is_file():
        raise ReportError(
            f"run {run.name} has no {record.ITEMS} (per-item predictions and references, written "
            "by training since the run-record schema 2): rerun it to compare"
        )
    items = record.read_items(Path(run_dir))
    if metric == "bleu":
        return bleu_stats([it["hyp"] for it in items], [it["refs"] for it in items])
    try:
        return np.asarray([[float(it["scores"][metric]), 1.0] for it in items])
    except KeyError:
        raise ReportError(
            f"metric {metric!r}: {path} holds no per-item {metric!r} scores; --compare supports "
            "bleu (recomputed from predictions + references) or per-item scores"
        ) from None


def compare(
    runs: Sequence[Run], spec_a: str, spec_b: str, metric: str = "bleu",
    n_boot: int = N_BOOT, seed: int = SEED,
) -> tuple[PairedResult, list[Run], list[Run]]:  # fmt: skip
    a, b = select(runs, parse_spec(spec_a)), select(runs, parse_spec(spec_b))
    stats_a = np.stack([item_stats(r, metric) for r in a])
    stats_b = np.stack([item_stats(r, metric) for r in b])
    seeds_a, seeds_b = [r.sweep.get("seed") for r in a], [r.sweep.get("seed") for r in b]
    score = bleu_score if metric == "bleu" else mean_score
    result = paired_bootstrap(stats_a, stats_b, score, paired_seeds=seeds_a == seeds_b,
                              n_boot=n_boot, seed=seed)  # fmt: skip
    return result, a, b


def render_compare(result: PairedResult, spec_a: str, spec_b: str, metric: str, a, b) -> str:
    def trainable(runs):
        counts = {r.trainable for r in runs}
        return ", ".join(str(c) for c in sorted(c for c in counts if c is not None)) or "?"

    unit = " (sacrebleu, 0-100)" if metric == "bleu" else ""
    seeds = "paired by seed" if result.paired_seeds else "resampled independently"
    return "\n".join([
        f"# Paired bootstrap: {metric}{unit}, A − B",
        "",
        f"- A: {spec_a} ({len(a)} seed(s), trainable {trainable(a)})",
        f"- B: {spec_b} ({len(b)} seed(s), trainable {trainable(b)})",
        f"- Δ = {result.delta:+.3f}, 95% CI [{result.ci[0]:+.3f}, {result.ci[1]:+.3f}], "
        f"p = {result.p_value:.4f} (two-sided)",
        f"- {result.n_items} test items resampled with replacement, seeds {seeds}, "
        f"{result.n_boot} replicates (Koehn 2004 paired bootstrap).",
        "",
    ])  # fmt: skip
