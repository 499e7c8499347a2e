"""``python -m lora_jax.report DIR --compare A B [--metric M]``: the paired bootstrap over test
items and seeds of the difference between two configurations in any per-item metric of any task
(lora_jax.report.stats.paired_bootstrap).

A and B select runs by their sweep key, as whitespace-separated ``axis=value`` pairs, e.g.
``--compare "targets=up,down r=8" "targets=q,k,v,o r=2"``; each must select runs that differ
only in their seed, all of one task and evaluated on the same test items. Per-item data: each
run's ``items_eval.jsonl`` (its final eval's hypothesis, references and ``scores`` per test item:
``task.item_scores``, written by training). The metric M (default: the runs' main metric) is
scored as the table scores it, in the table's units (fractions shown ×100 where the table
shows them so):

- a corpus metric (in ``task.corpus_metrics``: E2E's BLEU) is recomputed on every resample
  from the resampled items' summed sufficient statistics with the task's own formula (E2E: the
  official scorer's mteval-v13a BLEU, lower-cased; summed over all items the statistics give
  the table's BLEU exactly);
- a mean-of-items metric (E2E ROUGE-L, WikiSQL lf_acc / ex_acc, SAMSum rouge1/2/L) is the
  mean of the resampled items' scores.

A run-level metric (``--metric validation.loss`` or ``train.final_loss``) has no test items to
resample: A and B are then compared paired by seed, the paired t-test of the per-seed
differences (``compare_over_seeds``), and must have run the same seeds.

Items files written before per-item scores were stored hold hypotheses and references only;
their scores are recomputed with the task's ``item_scores`` where the references suffice (E2E,
SAMSum; WikiSQL needs the tables: rerun the eval).
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lora_jax.report.aggregate import cell_differences, describe_differences, is_percent
from lora_jax.report.collect import ReportError, Run, norm_value, target_label
from lora_jax.report.stats import (
    N_BOOT,
    SEED,
    PairedResult,
    mean_score,
    paired_bootstrap,
    paired_t,
)
from lora_jax.tasks import TASKS, EvalItem, Task, get_task
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


_NOTES = {
    ("e2e", "bleu"): "corpus BLEU of the E2E scorer (mteval-v13a, lower-cased), recomputed on "
    "every resample from per-item n-gram statistics",
}


def metric_leaf(metric: str) -> str:
    """ "bleu" or "eval.bleu" -> "bleu"; other paths (train., validation.) have no items."""
    head, dot, leaf = metric.partition(".")
    if not dot:
        return metric
    if head != "eval" or not leaf or "." in leaf:
        raise ReportError(
            f"--compare --metric {metric!r}: the paired bootstrap resamples test items, so it "
            "takes a test-set metric (its name, e.g. bleu, or eval.<name>)"
        )
    return leaf


def task_of(runs: Sequence[Run]) -> Task:
    """The one task of ``runs`` (their sweep key's ``task``), with its default settings."""
    names = sorted({str(r.sweep.get("task")) for r in runs})
    if len(names) != 1:
        raise ReportError(f"--compare: A and B must be runs of one task; got tasks {names}")
    if names[0] not in TASKS:
        raise ReportError(
            f"--compare: the runs' task {names[0]!r} is none of {sorted(TASKS)} (results.json "
            "sweep.task); the per-item metrics are the task's"
        )
    return get_task(names[0])


def read_run_items(run: Run) -> list[dict[str, Any]]:
    """The run's items_eval.jsonl as a list of dicts (clear errors when absent or broken)."""
    run_dir = run.extra.get("dir")
    path = Path(run_dir or ".") / record.ITEMS
    if not run_dir or not path.is_file():
        raise ReportError(
            f"run {run.name} has no {record.ITEMS} (per-item predictions, references and scores, "
            "written by training's final eval since the run-record schema 2): rerun it to compare"
        )
    try:
        items = record.read_items(Path(run_dir))
    except ValueError as e:  # json.JSONDecodeError
        raise ReportError(f"{path}: not valid JSON Lines ({e}); rerun the eval") from None
    if not items or not all(isinstance(it, dict) and "refs" in it for it in items):
        raise ReportError(f"{path}: expected one {{hyp, refs, scores}} object per test item")
    return items


def item_values(task: Task, items: list[dict[str, Any]], metric: str, where: str) -> list[Any]:
    """Per item, ``metric``'s stored score (a number or a list of sufficient statistics);
    recomputed from hyp + refs for an items file without scores (written before they were)."""
    supported = ", ".join(task.item_metrics)
    if metric not in task.item_metrics:
        raise ReportError(
            f"--compare --metric {metric!r}: task {task.name} keeps per-item scores for "
            f"{supported} only (a corpus metric with corpus-wide weights, such as NIST, METEOR "
            "or CIDEr, has no per-item form)"
        )
    if all("scores" not in it for it in items):
        evals = [EvalItem("", tuple(it["refs"])) for it in items]
        try:
            scores = task.item_scores([str(it.get("hyp", "")) for it in items], evals, [metric])
        except KeyError:
            raise ReportError(
                f"{where} holds no per-item scores (written before they were stored) and task "
                f"{task.name} needs more than the references to score items: rerun the eval"
            ) from None
    else:
        scores = [it.get("scores") or {} for it in items]
    values = [s.get(metric) for s in scores]
    missing = sum(v is None for v in values)
    if missing:
        raise ReportError(
            f"{where}: {missing} of {len(values)} items have no {metric!r} score: the run's eval "
            "did not compute it (e.g. E2E's rouge_l needs Java and task.coco_metrics=true); "
            f"per-item metrics of task {task.name}: {supported}"
        )
    return values


def as_stats(task: Task, metric: str, values: list[Any], where: str) -> np.ndarray:
    """[N, K] statistics of per-item values: a corpus metric's sufficient statistics as they
    are, a mean-of-items metric's score as [score, 1] (stats.mean_score)."""
    corpus = metric in task.corpus_metrics
    try:
        out = np.asarray(values if corpus else [[float(v), 1.0] for v in values], dtype=float)
    except (TypeError, ValueError):
        out = np.empty(0)
    if out.ndim != 2:
        kind = "lists of sufficient statistics" if corpus else "numbers"
        raise ReportError(f"{where}: the per-item {metric!r} scores are not {kind}")
    return out


def item_stats(run: Run, metric: str, task: Task | None = None) -> np.ndarray:
    """[N, K] per-item statistics of ``metric`` from the run's items_eval.jsonl (as_stats)."""
    task = task or task_of([run])
    name, where = metric_leaf(metric), f"run {run.name}'s {record.ITEMS}"
    return as_stats(task, name, item_values(task, read_run_items(run), name, where), where)


def bleu_stats(hyps: Sequence[str], refs: Sequence[Sequence[str]]) -> np.ndarray:
    """sacrebleu's (case-sensitive) per-item BLEU statistics [N, 10]. Not what --compare uses
    (it uses the task's, i.e. the table's, lower-cased BLEU: E2ETask.item_scores); kept for
    tests/sweeps/test_stats.py."""
    from sacrebleu.metrics import BLEU

    width = max(len(r) for r in refs)
    streams = [[r[j] if j < len(r) else None for r in refs] for j in range(width)]
    return np.asarray(BLEU()._extract_corpus_statistics(list(hyps), streams), dtype=float)


def bleu_score(stats: np.ndarray) -> np.ndarray:
    """sacrebleu's corpus BLEU (0-100) of summed :func:`bleu_stats` [..., 10]; see there."""
    from sacrebleu.metrics import BLEU

    flat = stats.reshape(-1, stats.shape[-1])
    out = [BLEU.compute_bleu(correct=list(s[2:6]), total=list(s[6:10]), sys_len=int(s[0]),
                             ref_len=int(s[1]), smooth_method="exp").score for s in flat]  # fmt: skip
    return np.asarray(out).reshape(stats.shape[:-1])


@dataclass(frozen=True)
class CompareResult(PairedResult):
    """The paired bootstrap's result in the table's units, with what was tested."""

    metric: str = ""
    task: str = ""
    scale: float = 1.0  # display multiplier (100 for fractions the table shows ×100)
    how: str = ""  # how the metric is computed on a resample
    per_seed_a: tuple[float, ...] = ()  # the metric of each of A's runs (display units)
    per_seed_b: tuple[float, ...] = ()
    notes: tuple[str, ...] = ()


def compare(
    runs: Sequence[Run], spec_a: str, spec_b: str, metric: str = "bleu",
    n_boot: int = N_BOOT, seed: int = SEED,
) -> tuple[CompareResult | SeedPairedResult, list[Run], list[Run]]:  # fmt: skip
    """The paired bootstrap of A − B in ``metric`` (module docstring); a run-level metric
    (``validation.loss``, ``train.final_loss``: no test items) gets the paired t-test over seeds
    (``compare_over_seeds``)."""
    head, dot, _ = metric.partition(".")
    if dot and head != "eval":
        return compare_over_seeds(runs, spec_a, spec_b, metric)
    if n_boot < 1:
        raise ReportError(f"--n-boot must be at least 1; got {n_boot}")
    name = metric_leaf(metric)
    a, b = select(runs, parse_spec(spec_a)), select(runs, parse_spec(spec_b))
    both = a + b
    task = task_of(both)
    items = [read_run_items(r) for r in both]
    refs = [[it["refs"] for it in run_items] for run_items in items]
    for r, run_items, run_refs in zip(both, items, refs):
        if run_refs != refs[0]:
            raise ReportError(
                f"--compare: runs {both[0].name} and {r.name} were evaluated on different test "
                f"items ({len(items[0])} vs {len(run_items)} items, or other references or "
                "order): the paired test needs the same eval set (same data, same "
                "task.max_eval_items)"
            )
    per_run = []
    for r, run_items in zip(both, items):
        where = f"run {r.name}'s {record.ITEMS}"
        per_run.append(as_stats(task, name, item_values(task, run_items, name, where), where))
    stats_a, stats_b = np.stack(per_run[: len(a)]), np.stack(per_run[len(a) :])
    base = task.corpus_metrics.get(name, mean_score)
    raw_a, raw_b = np.asarray(base(stats_a.sum(1))), np.asarray(base(stats_b.sum(1)))
    scale = 100.0 if is_percent(name, [*raw_a.tolist(), *raw_b.tolist()]) else 1.0

    def score(summed: np.ndarray) -> np.ndarray:
        return scale * np.asarray(base(summed), dtype=float)

    seeds_a, seeds_b = [r.sweep.get("seed") for r in a], [r.sweep.get("seed") for r in b]
    try:
        result = paired_bootstrap(stats_a, stats_b, score, paired_seeds=seeds_a == seeds_b,
                                  n_boot=n_boot, seed=seed)  # fmt: skip
    except ValueError as e:
        raise ReportError(f"--compare: {e}") from None
    notes = []
    for r, value in zip(both, [*raw_a.tolist(), *raw_b.tolist()]):
        stored = r.metrics.get(f"eval.{name}")
        if (
            stored is not None
            and np.isfinite(stored)
            and abs(stored - value) > 1e-6 * max(1.0, abs(stored))
        ):
            notes.append(f"{r.name}: its items give {name} {value:.6g}, its results.json "
                         f"{stored:.6g} (items from another eval?)")  # fmt: skip
    how = _NOTES.get((task.name, name)) or (
        f"corpus {name} recomputed on every resample from per-item sufficient statistics"
        if name in task.corpus_metrics
        else f"mean of per-item {name} over the resampled items"
    )
    out = CompareResult(**vars(result), metric=name, task=task.name, scale=scale, how=how,
                        per_seed_a=tuple((scale * raw_a).tolist()),
                        per_seed_b=tuple((scale * raw_b).tolist()),
                        notes=tuple(notes))  # fmt: skip
    return out, a, b


@dataclass(frozen=True)
class SeedPairedResult:
    """The paired t-test over seeds of a run-level metric (no test items to resample)."""

    metric: str
    delta: float  # mean over seeds of A − B
    ci: tuple[float, float]  # the 95% Student-t interval of the mean difference
    p_value: float  # two-sided, t with n − 1 degrees of freedom
    seeds: tuple[Any, ...]
    per_seed_a: tuple[float, ...]
    per_seed_b: tuple[float, ...]


def compare_over_seeds(
    runs: Sequence[Run], spec_a: str, spec_b: str, metric: str
) -> tuple[SeedPairedResult, list[Run], list[Run]]:
    """A − B in a run-level metric (e.g. ``validation.loss``), paired by seed: the paired
    t-test of the per-seed differences (``stats.paired_t``). Cells of one seed share that seed's
    data (the validation slice included: data.split_validation draws it with the run's data
    seed), so the within-seed difference removes what the seed changes for both."""
    a, b = select(runs, parse_spec(spec_a)), select(runs, parse_spec(spec_b))
    seeds_a, seeds_b = [r.sweep.get("seed") for r in a], [r.sweep.get("seed") for r in b]
    if seeds_a != seeds_b:
        raise ReportError(
            f"--compare --metric {metric}: a run-level metric has no test items to resample, so "
            "A and B are compared paired by seed (a paired t-test over seeds) and must have run "
            f"the same seeds; A ran seeds {seeds_a}, B ran {seeds_b}: narrow the specs to the "
            "shared seeds' runs or run the missing ones"
        )
    values = []
    for r in a + b:
        v = r.metrics.get(metric)
        if v is None or not np.isfinite(v):
            raise ReportError(
                f"--compare --metric {metric}: run {r.name} has no finite {metric} in its "
                "results.json metrics (validation.loss needs trainer.val_examples > 0)"
            )
        values.append(float(v))
    va, vb = values[: len(a)], values[len(a) :]
    try:
        delta, ci, p = paired_t(va, vb)
    except ValueError as e:
        raise ReportError(f"--compare --metric {metric}: {e}") from None
    return SeedPairedResult(metric, delta, ci, p, tuple(seeds_a), tuple(va), tuple(vb)), a, b


def _trainable(runs) -> str:
    counts = {r.trainable for r in runs}
    return ", ".join(str(c) for c in sorted(c for c in counts if c is not None)) or "?"


def _p(p: float) -> str:
    return f"{p:.4f}" if p >= 1e-4 else f"{p:.1e}"


def render_over_seeds(result: SeedPairedResult, spec_a: str, spec_b: str, a, b) -> str:
    def side(spec, runs, vals):
        each = ", ".join(f"{v:.4f}" for v in vals)
        return (f"{spec} ({len(runs)} seed(s), trainable {_trainable(runs)}): "
                f"{float(np.mean(vals)):.4f} (per seed {each})")  # fmt: skip

    diffs = ", ".join(f"{x - y:+.4f}" for x, y in zip(result.per_seed_a, result.per_seed_b))
    return "\n".join([
        f"# Paired t-test over seeds: {result.metric}, A − B",
        "",
        f"- A: {side(spec_a, a, result.per_seed_a)}",
        f"- B: {side(spec_b, b, result.per_seed_b)}",
        f"- Δ = {result.delta:+.4f} (per seed {diffs}), 95% CI [{result.ci[0]:+.4f}, "
        f"{result.ci[1]:+.4f}], p = {_p(result.p_value)} (two-sided)",
        f"- seeds {list(result.seeds)} paired (a run-level metric: no test items to resample); "
        f"Student t with {len(result.seeds) - 1} degrees of freedom on the per-seed differences.",
        "",
    ])  # fmt: skip


def render_compare(result: PairedResult, spec_a: str, spec_b: str, metric: str, a, b) -> str:
    if isinstance(result, SeedPairedResult):
        return render_over_seeds(result, spec_a, spec_b, a, b)

    def values(per_seed) -> str:
        if not per_seed:
            return ""
        mean = float(np.mean(per_seed))
        each = ", ".join(f"{v:.3f}" for v in per_seed)
        return f": {mean:.3f}" + (f" (per seed {each})" if len(per_seed) > 1 else "")

    name = getattr(result, "metric", "") or metric
    unit = " (×100, as the table)" if getattr(result, "scale", 1.0) == 100.0 else ""
    seeds = "paired by seed" if result.paired_seeds else "resampled independently"
    how = getattr(result, "how", "")
    lines = [
        f"# Paired bootstrap: {name}{unit}, A − B",
        "",
        f"- A: {spec_a} ({len(a)} seed(s), trainable {_trainable(a)})"
        f"{values(getattr(result, 'per_seed_a', ()))}",
        f"- B: {spec_b} ({len(b)} seed(s), trainable {_trainable(b)})"
        f"{values(getattr(result, 'per_seed_b', ()))}",
        f"- Δ = {result.delta:+.3f}, 95% CI [{result.ci[0]:+.3f}, {result.ci[1]:+.3f}], "
        f"p = {result.p_value:.4f} (two-sided)",
        f"- {result.n_items} test items resampled with replacement, seeds {seeds}, "
        f"{result.n_boot} replicates (Koehn 2004 paired bootstrap)" + (f"; {how}." if how else "."),
    ]  # fmt: skip
    lines += [f"- note: {n}" for n in getattr(result, "notes", ())]
    return "\n".join([*lines, ""])
