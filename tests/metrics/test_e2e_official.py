"""The E2E metrics against the official E2E scorer's own outputs (tests/fixtures/e2e-scorer):
NIST in both of its modes (-p = pymteval, default = Perl mteval-v13a), BLEU, METEOR, ROUGE-L,
CIDEr. Tolerances: the scorer prints 4 decimals; ±0.005 BLEU/METEOR/ROUGE-L, ±0.01 NIST,
±0.02 CIDEr (the issue's)."""

import re
from pathlib import Path

import pytest

from lora_jax.metrics.__main__ import read_hyps
from lora_jax.metrics.coco import java_available
from lora_jax.metrics.e2e import e2e_scores
from lora_jax.metrics.mteval import corpus_bleu, corpus_nist
from lora_jax.tasks import get_task

DIR = Path(__file__).parents[1] / "fixtures" / "e2e-scorer"
NAMES = ("hyp_firstref", "hyp_short", "hyp_mrstring")
TOL = {"bleu": 0.005, "nist": 0.01, "meteor": 0.005, "rouge_l": 0.005, "cider": 0.02}
KEYS = {"BLEU": "bleu", "NIST": "nist", "METEOR": "meteor", "ROUGE_L": "rouge_l", "CIDEr": "cider"}


def official(name: str, suffix: str) -> dict[str, float]:
    """The scorer's final 4-decimal 'METRIC: value' lines (later lines win)."""
    out = {}
    for line in (DIR / f"{name}.{suffix}.txt").read_text().splitlines():
        m = re.fullmatch(r"(BLEU|NIST|METEOR|ROUGE_L|CIDEr): ([0-9.]+)", line.strip())
        if m:
            out[KEYS[m[1]]] = float(m[2])
    return out


@pytest.fixture(scope="module")
def refs() -> list[list[str]]:
    task = get_task("e2e", dataset=None, data_files={"eval": str(DIR / "testset_w_refs.csv")})
    items = task.eval_groups(task.load("eval"))
    assert len(items) == 630
    return [list(it.references) for it in items]


def test_official_vectors_differ_between_nist_modes():
    # The fixtures themselves: the two modes disagree on NIST for firstref/short, so a test that
    # passed with one formula for both would be caught.
    assert official("hyp_short", "official")["nist"] != official("hyp_short", "official-p")["nist"]


@pytest.fixture(scope="module")
def mteval_scores(refs) -> dict[str, dict[str, float]]:
    """BLEU and NIST in both modes for every vector, computed once (a few seconds)."""
    out = {}
    for name in NAMES:
        hyps = read_hyps(str(DIR / f"{name}.txt"))
        out[name] = {"bleu": corpus_bleu(hyps, refs)}
        out[name] |= {mode: corpus_nist(hyps, refs, mode=mode) for mode in ("pymteval", "mteval")}
    return out


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("mode, suffix", [("pymteval", "official-p"), ("mteval", "official")])
def test_bleu_and_nist_match_the_official_scorer(mteval_scores, name, mode, suffix):
    want, got = official(name, suffix), mteval_scores[name]
    assert got["bleu"] == pytest.approx(want["bleu"], abs=TOL["bleu"])
    assert got[mode] == pytest.approx(want["nist"], abs=TOL["nist"])


@pytest.fixture(scope="module")
def coco_short(refs) -> dict:
    """All five metrics of hyp_short (every one non-trivial there), scored once: METEOR,
    ROUGE-L and CIDEr need Java (a tokenizer and a METEOR JVM, ~15 s)."""
    reason = java_available()
    if reason is not None:
        pytest.skip(reason)
    return e2e_scores(read_hyps(str(DIR / "hyp_short.txt")), refs, nist_mode="mteval")


def test_all_five_metrics_match_the_official_scorer(coco_short):
    want = official("hyp_short", "official")
    for key in ("meteor", "rouge_l", "cider", "bleu", "nist"):
        assert coco_short[key] == pytest.approx(want[key], abs=TOL[key]), key
    # METEOR/ROUGE-L/CIDEr come from the same code in both of the scorer's modes.
    assert {k: v for k, v in official("hyp_short", "official-p").items() if k != "nist"} == {
        k: v for k, v in want.items() if k != "nist"
    }


def test_cli_nist_mode(capsys):
    import json

    from lora_jax.metrics.__main__ import main

    args = ["e2e", "--hyp", str(DIR / "hyp_short.txt"), "--refs", str(DIR / "testset_w_refs.csv")]
    assert main([*args, "--no-coco", "--nist-mode", "mteval"]) == 0
    got = json.loads(capsys.readouterr().out)["nist"]
    assert got == pytest.approx(official("hyp_short", "official")["nist"], abs=1e-4)
    with pytest.raises(SystemExit):  # argparse names the choices
        main([*args, "--nist-mode", "perl"])
    assert "invalid choice: 'perl'" in capsys.readouterr().err
