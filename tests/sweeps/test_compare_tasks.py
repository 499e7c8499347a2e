"""``--compare`` on every task's metrics, from hand-made run records (results.json and an
items_eval.jsonl written by ``record.write_items`` with the task's ``item_scores``, as the final
eval writes them).

The expected values are computed here, not by the report: per-item scores by hand (WikiSQL
match/no-match by construction, ROUGE with rouge-score itself), the paired bootstrap by hand with
the same RNG protocol (lora_jax.report.stats.paired_bootstrap: items [B, N], then A's seed
indices, then B's unless paired) and loops instead of the report's einsum, and E2E BLEU by
rescoring resampled text with the table's scorer.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from lora_jax import report as rep
from lora_jax.metrics.coco import java_available
from lora_jax.metrics.mteval import bleu_of_stats, corpus_bleu
from lora_jax.metrics.wikisql import Query, query_to_text
from lora_jax.report.compare import compare
from lora_jax.tasks import EvalItem, get_task
from lora_jax.train import record

E2E_DIR = Path(__file__).parents[1] / "fixtures" / "e2e-scorer"
N_BOOT = 2000


def write_run(root: Path, idx: int, task: str, targets: str, seed: int, metrics: dict,
              hyps: list[str], items: list[EvalItem], scores: list[dict]) -> Path:  # fmt: skip
    """One run dir as training leaves it: results.json + items_eval.jsonl."""
    run_dir = root / str(idx)
    run_dir.mkdir(parents=True)
    body = {
        "status": "ok",
        "error": None,
        "run": {"name": f"run-{idx}", "dir": str(run_dir)},
        "config": {"lora": {"r": 4}, "task": {"name": task}},
        "sweep": {
            "model": "tiny",
            "task": task,
            "targets": targets,
            "r": 4,
            "alpha": 8.0,
            "scaling": "standard",
            "seed": seed,
        },
        "params": {"trainable": 1000},
        "metrics": {"eval": metrics},
        "main_metric": get_task(task).main_metric,
        "items": record.write_items(run_dir, hyps, [it.references for it in items], scores),
    }
    (run_dir / record.RESULTS).write_text(json.dumps(body))
    return run_dir


def by_hand_bootstrap(per_a: np.ndarray, per_b: np.ndarray, corpus, paired: bool,
                      n_boot: int = N_BOOT, seed: int = 0) -> tuple[float, float]:  # fmt: skip
    """(Δ, two-sided p) of the paired bootstrap, one replicate at a time.

    per_a: [S_a, N] per-item values (or anything ``corpus(seed_values, item_indices)`` takes);
    corpus(values_of_one_seed, idx) -> the metric of those items (with repeats)."""
    s_a, n = len(per_a), len(per_a[0])
    s_b = len(per_b)
    rng = np.random.default_rng(seed)
    items = rng.integers(0, n, size=(n_boot, n))
    seeds_a = rng.integers(0, s_a, size=(n_boot, s_a))
    seeds_b = seeds_a if paired else rng.integers(0, s_b, size=(n_boot, s_b))
    d = np.empty(n_boot)
    for k in range(n_boot):
        a = np.mean([corpus(per_a[s], items[k]) for s in seeds_a[k]])
        b = np.mean([corpus(per_b[s], items[k]) for s in seeds_b[k]])
        d[k] = a - b
    everything = np.arange(n)
    obs = np.mean([corpus(v, everything) for v in per_a]) - np.mean(
        [corpus(v, everything) for v in per_b]
    )
    extreme = np.abs(d - d.mean()) >= abs(obs) - 1e-12 * max(1.0, abs(obs))
    return float(obs), (1 + int(extreme.sum())) / (1 + n_boot)


def printed(out: str) -> tuple[float, float, float, float]:
    m = re.search(r"Δ = ([-+.\d]+), 95% CI \[([-+.\d]+), ([-+.\d]+)\], p = ([.\d]+)", out)
    assert m, out
    return tuple(map(float, m.groups()))  # type: ignore[return-value]


# ------------------------------------------------------------------------------ WikiSQL
TABLE = {
    "header": ["Player", "No.", "Position", "Years"],
    "types": ["text", "real", "text", "text"],
    "rows": [
        ["Mark O'Brien", "5", "Guard", "1995"],
        ["Tim Duncan", "21", "Forward", "2000"],
        ["Joe Smith", "5", "Forward", "1999"],
    ],
}
GOLD = Query(0, 0, ((1, 0, "21"),))  # SELECT "Player" WHERE "No." = '21' -> tim duncan
# variant -> (prediction, logical-form match, execution match), decided by hand
WIKISQL_VARIANTS = {
    "gold": (query_to_text(GOLD, TABLE["header"]), 1.0, 1.0),
    # another query with the same answer: only Tim Duncan played in 2000
    "same_answer": ("""SELECT "Player" FROM table WHERE "Years" = '2000'""", 0.0, 1.0),
    "wrong": ("""SELECT "Position" FROM table WHERE "No." = '21'""", 0.0, 0.0),
    "garbage": ("SELECT the player please", 0.0, 0.0),
}


def wikisql_runs(root: Path, n_items: int = 24) -> dict[tuple[str, int], tuple[list[str], Path]]:
    """q,v (good: mostly gold) vs q (worse) x seeds 0, 1 on one hand-built table:
    (targets, seed) -> (the variant of every item, the run dir)."""
    task = get_task("wikisql")
    items = [
        EvalItem(f"q{i}", (query_to_text(GOLD, TABLE["header"]),), {"table": TABLE, "query": GOLD})
        for i in range(n_items)
    ]
    rng = np.random.default_rng(7)
    chosen = {}
    idx = 0
    for targets, p in (("q,v", [0.6, 0.2, 0.1, 0.1]), ("q", [0.35, 0.2, 0.3, 0.15])):
        for seed in (0, 1):
            names = list(rng.choice(list(WIKISQL_VARIANTS), size=n_items, p=p))
            hyps = [WIKISQL_VARIANTS[v][0] for v in names]
            scores = task.item_scores(hyps, items)
            d = write_run(root, idx, "wikisql", targets, seed, task.score(hyps, items), hyps,
                          items, scores)  # fmt: skip
            chosen[(targets, seed)] = (names, d)
            idx += 1
    return chosen


@pytest.mark.parametrize("metric, col", [("lf_acc", 1), ("ex_acc", 2)])
def test_wikisql_compare_matches_a_by_hand_paired_bootstrap(tmp_path, capsys, metric, col):
    chosen = wikisql_runs(tmp_path)
    per = {
        k: np.array([WIKISQL_VARIANTS[v][col] for v in names]) for k, (names, _) in chosen.items()
    }
    # the stored per-item scores are the by-hand ones, and the table's metric is their mean
    for key, values in per.items():
        run_dir = chosen[key][1]
        assert [it["scores"][metric] for it in record.read_items(run_dir)] == values.tolist()
        table = json.loads((run_dir / record.RESULTS).read_text())["metrics"]["eval"][metric]
        assert table == pytest.approx(values.mean(), abs=1e-15)

    a = [per[("q,v", s)] for s in (0, 1)]
    b = [per[("q", s)] for s in (0, 1)]
    obs, p = by_hand_bootstrap(a, b, lambda v, idx: v[idx].mean(), paired=True)
    runs = rep.collect_runs(tmp_path)
    result, _, _ = compare(runs, "targets=q,v", "targets=q", metric=metric, n_boot=N_BOOT)
    assert result.paired_seeds and result.n_items == 24 and result.scale == 1.0  # as the table
    assert result.delta == pytest.approx(obs, abs=1e-12)
    assert result.p_value == p
    assert 1 / (1 + N_BOOT) < p < 1
    assert rep.main([str(tmp_path), "--compare", "targets=q,v", "targets=q", "--metric", metric,
                     "--n-boot", str(N_BOOT)]) == 0  # fmt: skip
    out = capsys.readouterr().out
    delta, lo, hi, p_printed = printed(out)
    assert delta == pytest.approx(obs, abs=5e-4) and p_printed == pytest.approx(p, abs=5e-5)
    assert lo <= delta <= hi and f"mean of per-item {metric}" in out and "note:" not in out


def test_wikisql_default_metric_is_the_main_metric_and_unknown_metrics_are_refused(
    tmp_path, capsys
):
    wikisql_runs(tmp_path, n_items=6)
    assert rep.main([str(tmp_path), "--compare", "targets=q,v", "targets=q", "--n-boot",
                     "50"]) == 0  # fmt: skip
    assert "Paired bootstrap: lf_acc" in capsys.readouterr().out
    assert rep.main([str(tmp_path), "--compare", "targets=q,v", "targets=q", "--metric",
                     "bleu"]) == 2  # fmt: skip
    err = capsys.readouterr().err
    assert "task wikisql keeps per-item scores for lf_acc, ex_acc only" in err
    # a run-level metric is the paired t over seeds (tests/sweeps/test_select_by.py): these runs
    # have no validation loss, and the refusal says so
    assert rep.main([str(tmp_path), "--compare", "targets=q,v", "targets=q", "--metric",
                     "validation.loss"]) == 2  # fmt: skip
    assert "has no finite validation.loss" in capsys.readouterr().err
    assert rep.main([str(tmp_path), "--compare", "targets=q,v", "targets=q", "--metric",
                     "eval.lf_acc.x"]) == 2  # fmt: skip
    assert "test-set metric" in capsys.readouterr().err


def test_wikisql_items_without_scores_need_a_rerun(tmp_path, capsys):
    wikisql_runs(tmp_path, n_items=6)
    for d in tmp_path.iterdir():  # an items file from before per-item scores: hyp + refs only
        items = record.read_items(d)
        record.write_items(d, [it["hyp"] for it in items], [it["refs"] for it in items])
    assert rep.main([str(tmp_path), "--compare", "targets=q,v", "targets=q"]) == 2
    assert "rerun the eval" in capsys.readouterr().err


# ------------------------------------------------------------------------------ SAMSum
def samsum_items(n: int) -> list[EvalItem]:
    people = ["Anna", "Ben", "Kate", "Sam", "Tom", "Mia"]
    places = ["the cafe", "the station", "the park", "the office"]
    items = []
    for i in range(n):
        a, b, where = people[i % 6], people[(i + 2) % 6], places[i % 4]
        dialogue = f"{a}: Meet at {where} at {i % 12 + 1}?\n{b}: Yes, see you there."
        summary = f"{a} and {b} are meeting at {where} at {i % 12 + 1} o'clock."
        items.append(EvalItem(dialogue, (summary,), {"id": f"s{i}"}))
    return items


def samsum_hyp(item: EvalItem, variant: int) -> str:
    ref = item.references[0]
    words = ref.split()
    return [ref, " ".join(words[: len(words) // 2]), item.source.split("\n")[0],
            "They talk about something."][variant]  # fmt: skip


@pytest.mark.parametrize("metric", ["rougeL", "rouge1", "rouge2"])
def test_samsum_compare_matches_a_by_hand_bootstrap_unpaired_seeds(tmp_path, capsys, metric):
    """A: 2 seeds, B: 3 seeds (so seeds are resampled independently); per-item ROUGE F1 from
    rouge-score itself, the table's mean ×100."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    task = get_task("samsum")
    items = samsum_items(20)
    rng = np.random.default_rng(3)
    per: dict[str, list[np.ndarray]] = {"q,v": [], "q": []}
    idx = 0
    for targets, seeds, p in (("q,v", (0, 1), [0.5, 0.3, 0.1, 0.1]),
                              ("q", (0, 1, 2), [0.3, 0.3, 0.2, 0.2])):  # fmt: skip
        for seed in seeds:
            hyps = [samsum_hyp(it, int(v)) for it, v in zip(items, rng.choice(4, 20, p=p))]
            by_hand = np.array(
                [scorer.score(it.references[0], h)[metric].fmeasure for h, it in zip(hyps, items)]
            )
            per[targets].append(by_hand)
            table = task.score(hyps, items)
            assert table[metric] == pytest.approx(by_hand.mean(), abs=1e-15)
            d = write_run(tmp_path, idx, "samsum", targets, seed, table, hyps, items,
                          task.item_scores(hyps, items))  # fmt: skip
            assert [it["scores"][metric] for it in record.read_items(d)] == by_hand.tolist()
            idx += 1
    obs, p = by_hand_bootstrap(
        per["q,v"], per["q"], lambda v, idx: 100 * v[idx].mean(), paired=False
    )
    result, a, b = compare(rep.collect_runs(tmp_path), "targets=q,v", "targets=q",
                           metric=metric, n_boot=N_BOOT)  # fmt: skip
    assert (len(a), len(b)) == (2, 3) and not result.paired_seeds
    assert result.scale == 100.0  # ROUGE shown ×100, as the table shows it
    assert result.delta == pytest.approx(obs, abs=1e-10)
    assert result.p_value == p and 1 / (1 + N_BOOT) < p < 1
    assert rep.main([str(tmp_path), "--compare", "targets=q,v", "targets=q", "--metric", metric,
                     "--n-boot", str(N_BOOT)]) == 0  # fmt: skip
    out = capsys.readouterr().out
    delta, _, _, p_printed = printed(out)
    assert delta == pytest.approx(obs, abs=5e-4) and p_printed == pytest.approx(p, abs=5e-5)
    assert "resampled independently" in out and "×100" in out and "note:" not in out


# ------------------------------------------------------------------------------ E2E
@pytest.fixture(scope="module")
def e2e_fixture() -> tuple[list[EvalItem], dict[str, list[str]]]:
    from lora_jax.metrics.__main__ import read_hyps

    task = get_task("e2e", dataset=None, data_files={"eval": str(E2E_DIR / "testset_w_refs.csv")})
    items = task.eval_groups(task.load("eval"))
    hyps = {n: read_hyps(str(E2E_DIR / f"{n}.txt")) for n in ("hyp_short", "hyp_firstref")}
    return items, hyps


def official_bleu(name: str) -> float:
    text = (E2E_DIR / f"{name}.official-p.txt").read_text()
    return float(re.search(r"^BLEU: ([0-9.]+)$", text, re.M).group(1))


@pytest.mark.parametrize("name", ["hyp_short", "hyp_firstref"])
def test_e2e_stored_bleu_statistics_sum_to_the_tables_bleu(tmp_path, e2e_fixture, name):
    """All 630 MRs of the official test set: the stored per-item statistics, summed, give the
    BLEU that the task's score() reports (to the bit), which is the official scorer's."""
    items, hyps = e2e_fixture
    task = get_task("e2e", coco_metrics=False)
    table = task.score(hyps[name], items)["bleu"]
    assert table == pytest.approx(official_bleu(name), abs=5e-5)  # the scorer prints 4 decimals
    record.write_items(tmp_path, hyps[name], [it.references for it in items],
                       task.item_scores(hyps[name], items))  # fmt: skip
    stored = [it["scores"] for it in record.read_items(tmp_path)]
    assert all(set(s) == {"bleu"} for s in stored)  # no rouge_l with the COCO metrics off
    stats = np.array([s["bleu"] for s in stored])
    assert stats.shape == (630, 10) and stats.dtype.kind == "i"  # integer counts
    assert bleu_of_stats(stats.sum(0)) == table
    # the statistics are the lower-cased ones: an upper-cased hypothesis set has the same
    upper = task.item_scores([h.upper() for h in hyps[name][:50]], items[:50])
    assert [u["bleu"] for u in upper] == stats[:50].tolist()


@pytest.mark.skipif(java_available() is not None, reason="ROUGE-L needs Java (PTB tokenizer)")
def test_e2e_item_rouge_l_mean_is_the_tables_rouge_l(e2e_fixture, monkeypatch):
    import lora_jax.metrics.coco as coco

    def no_meteor(*_):  # skip the METEOR jar (slow); score() then reports meteor None
        raise RuntimeError("skipped in this test")

    monkeypatch.setattr(coco, "meteor_score", no_meteor)
    items, hyps = e2e_fixture
    items, short = items[:30], hyps["hyp_short"][:30]
    task = get_task("e2e")
    per_item = task.item_scores(short, items)
    assert all(set(s) == {"bleu", "rouge_l"} for s in per_item)
    values = np.array([s["rouge_l"] for s in per_item])
    assert len(set(values.tolist())) > 5 and (values >= 0).all() and (values <= 1).all()
    assert values.mean() == pytest.approx(task.score(short, items)["rouge_l"], abs=1e-12)


def test_e2e_compare_uses_the_tables_lowercased_bleu(tmp_path, e2e_fixture, capsys, monkeypatch):
    """A: upper-cased first references on even MRs, the scorer's short vector on odd ones; B the
    other way round, with the references as written. Lower-cased (the table's BLEU) A and B are
    close; case-sensitive, A would lose by far. Δ is the table's BLEU difference (×100), p the
    by-hand bootstrap's with BLEU rescored from the resampled text by the table's scorer."""
    import functools

    import sacrebleu

    import lora_jax.metrics.mteval as mteval

    items, hyps = e2e_fixture
    items, short = items[:20], hyps["hyp_short"][:20]
    task = get_task("e2e", coco_metrics=False)
    refs = [list(it.references) for it in items]
    a = [it.references[0].upper() if i % 2 == 0 else short[i] for i, it in enumerate(items)]
    b = [it.references[0] if i % 2 else short[i] for i, it in enumerate(items)]
    texts = {}
    idx = 0
    for targets, base in (("q,v", a), ("q", b)):
        for seed in (0, 1):
            out = [h if i != seed else h + " and more" for i, h in enumerate(base)]
            texts[(targets, seed)] = out
            write_run(tmp_path, idx, "e2e", targets, seed, task.score(out, items), out, items,
                      task.item_scores(out, items))  # fmt: skip
            idx += 1
    table = {k: 100 * corpus_bleu(v, refs) for k, v in texts.items()}
    expected = np.mean([table[("q,v", s)] for s in (0, 1)]) - np.mean(
        [table[("q", s)] for s in (0, 1)]
    )
    widths = max(len(r) for r in refs)
    streams = [[r[j] if j < len(r) else None for r in refs] for j in range(widths)]
    cased = {k: sacrebleu.corpus_bleu(v, streams).score for k, v in texts.items()}
    cased_delta = np.mean([cased[("q,v", s)] for s in (0, 1)]) - np.mean(
        [cased[("q", s)] for s in (0, 1)]
    )
    assert abs(expected) < 10 and cased_delta < expected - 20  # casing matters here

    n_boot = 300  # the by-hand side rescores text: slow
    result, _, _ = compare(rep.collect_runs(tmp_path), "targets=q,v", "targets=q", metric="bleu",
                           n_boot=n_boot)  # fmt: skip
    assert result.scale == 100.0 and result.delta == pytest.approx(expected, abs=1e-9)
    assert result.per_seed_a == pytest.approx([table[("q,v", s)] for s in (0, 1)], abs=1e-9)
    # rescoring resampled text: memoize the tokenizer, the text is the same every time
    monkeypatch.setattr(mteval, "tokenize_13a", functools.lru_cache(None)(mteval.tokenize_13a))
    obs, p = by_hand_bootstrap(
        [texts[("q,v", s)] for s in (0, 1)], [texts[("q", s)] for s in (0, 1)],
        lambda v, idx: 100 * corpus_bleu([v[i] for i in idx], [refs[i] for i in idx]),
        paired=True, n_boot=n_boot,
    )  # fmt: skip
    assert obs == pytest.approx(expected, abs=1e-9)
    assert result.p_value == p and 0.01 < p < 1

    assert rep.main([str(tmp_path), "--compare", "targets=q,v", "targets=q", "--n-boot",
                     str(n_boot)]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert printed(out)[0] == pytest.approx(expected, abs=5e-4)
    assert "lower-cased" in out and "×100" in out and "note:" not in out


def test_e2e_items_without_scores_are_rescored_with_the_tables_bleu(tmp_path, e2e_fixture):
    """An items file from before per-item scores (hyp + refs): BLEU is recomputed with the
    table's scorer, so Δ is the same as with stored statistics."""
    items, hyps = e2e_fixture
    items = items[:25]
    task = get_task("e2e", coco_metrics=False)
    for idx, (targets, base) in enumerate(
        (("q,v", [it.references[0] for it in items]), ("q", hyps["hyp_short"][:25]))
    ):
        write_run(tmp_path, idx, "e2e", targets, 0, task.score(base, items), base, items, None)
    assert all("scores" not in it for d in tmp_path.iterdir() for it in record.read_items(d))
    result, _, _ = compare(rep.collect_runs(tmp_path), "targets=q,v", "targets=q", n_boot=20)
    refs = [list(it.references) for it in items]
    expected = 100 * (
        corpus_bleu([it.references[0] for it in items], refs)
        - corpus_bleu(hyps["hyp_short"][:25], refs)
    )
    assert result.delta == pytest.approx(expected, abs=1e-9) and not result.notes


def test_compare_refuses_runs_on_different_items(tmp_path, capsys):
    task = get_task("samsum")
    items = samsum_items(6)
    for idx, (targets, n) in enumerate((("q,v", 6), ("q", 5))):
        hyps = [samsum_hyp(it, 1) for it in items[:n]]
        write_run(tmp_path, idx, "samsum", targets, 0, task.score(hyps, items[:n]), hyps,
                  items[:n], task.item_scores(hyps, items[:n]))  # fmt: skip
    assert rep.main([str(tmp_path), "--compare", "targets=q,v", "targets=q"]) == 2
    assert "evaluated on different test items" in capsys.readouterr().err
