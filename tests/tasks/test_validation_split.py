"""Validation is never the test split (issue: fair ablations). Each task's validation source:
E2E's official dev set when training on the train set, a seeded hold-out of the training file
offline (training on the dev set), SAMSum's validation split, and for WikiSQL (whose eval split
is the validation split, as in the LoRA paper) a hold-out of train. Checked on the real E2E
CSVs and on the WikiSQL / SAMSum fixtures: no validation item is a test item, a hold-out is
disjoint from what is trained on, and the same seed holds out the same slice."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from lora_jax.tasks import get_task
from lora_jax.train.data import split_validation

FIX = Path(__file__).resolve().parents[1] / "fixtures"
E2E_DIR = Path(os.environ.get("LORA_JAX_E2E_DIR", "../shared/data/e2e"))


def _cfg(n: int, seed: int = 0, data_seed=None):
    return OmegaConf.create({"seed": seed, "trainer": {"val_examples": n, "data_seed": data_seed},
                             "task": {"max_train_examples": None}})  # fmt: skip


def _split(task, n, **kw):
    train = task.load("train")
    val, rest, info = split_validation(_cfg(n, **kw), task, train)
    return train, val, rest, info


@pytest.mark.skipif(not (E2E_DIR / "devset.csv").is_file(), reason="E2E CSVs not present")
def test_e2e_offline_holds_out_whole_mrs_of_the_training_file():
    task = get_task("e2e", data_dir=str(E2E_DIR), train_file="devset.csv")
    assert task.validation_origin() is None  # the dev set is the training file here
    train, val, rest, info = _split(task, 200, seed=3)
    assert info["split"] == "train-holdout" and info["seed"] == 3
    assert len(val) >= 200 and len(val) + len(rest) == len(train)
    held = {ex.key for ex in val}
    assert held.isdisjoint(ex.key for ex in rest)  # whole MRs: no MR on both sides
    assert held.isdisjoint(ex.key for ex in task.load("eval"))  # and none is a test MR
    # the same seed (data seed, else seed) gives the same slice; another seed another one
    assert [e.target for e in _split(task, 200, seed=3)[1]] == [e.target for e in val]
    assert [e.target for e in _split(task, 200, seed=5, data_seed=3)[1]] == [e.target for e in val]
    assert {e.key for e in _split(task, 200, seed=4)[1]} != held


@pytest.mark.skipif(not (E2E_DIR / "devset.csv").is_file(), reason="E2E CSVs not present")
def test_e2e_with_its_train_set_validates_on_the_official_dev_set(tmp_path):
    for name in ("devset.csv", "testset_w_refs.csv"):
        (tmp_path / name).symlink_to((E2E_DIR / name).resolve())
    # a stand-in training file (the train set is not in this workplace): 3 dev rows
    rows = (E2E_DIR / "devset.csv").read_text().splitlines()[:4]
    (tmp_path / "trainset.csv").write_text("\n".join(rows) + "\n")
    task = get_task("e2e", data_dir=str(tmp_path))
    assert task.validation_origin() == str((tmp_path / "devset.csv").resolve())
    train, val, rest, info = _split(task, 300)
    assert info == {"split": "validation", "source": task.validation_origin(), "examples": 300}
    assert rest == train  # nothing is taken out of training
    assert {e.key for e in val}.isdisjoint(e.key for e in task.load("eval"))


def test_wikisql_validation_is_held_out_of_train_because_eval_is_its_validation_split():
    task = get_task("wikisql", data_dir=str(FIX / "wikisql"))
    assert task.validation_origin() is None
    train, val, rest, info = _split(task, 1)
    assert info["split"] == "train-holdout" and len(val) == 1 and len(rest) == len(train) - 1
    questions = lambda exs: {e.source for e in exs}
    assert questions(val).isdisjoint(questions(rest))
    assert questions(val).isdisjoint(questions(task.load("eval")))


def test_samsum_validates_on_its_validation_split():
    task = get_task("samsum", data_dir=str(FIX / "samsum"))
    assert task.validation_origin() == str((FIX / "samsum" / "validation.jsonl").resolve())
    _, val, _, info = _split(task, 10)
    assert info["split"] == "validation" and len(val) == 2
    assert {e.source for e in val}.isdisjoint(e.source for e in task.load("eval"))


def test_hub_sources_name_their_validation_split():
    assert get_task("e2e").validation_origin() == "tuetschek/e2e_nlg[validation]"
    assert get_task("samsum").validation_origin() == "Samsung/samsum[validation]"
    assert get_task("wikisql").validation_origin() is None  # eval is validation: hold out


def test_a_hold_out_of_everything_is_refused():
    task = get_task("wikisql", data_dir=str(FIX / "wikisql"))
    with pytest.raises(Exception, match="holds out all"):
        _split(task, 100)
