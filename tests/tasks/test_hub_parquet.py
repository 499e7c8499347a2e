"""WikiSQL and SAMSum from the hub with today's ``datasets`` (>= 4 runs no loading scripts):
``task=wikisql`` / ``task=samsum`` default to the hub's parquet conversion
(``revision: refs/convert/parquet``, laid out as ``<config>/<split>/0000.parquet``). The loading
code is exercised on local folders in that layout, made here from the JSONL fixtures (the hub is
unreachable from CI); a repo with only a loading script gets a one-line error naming the option."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lora_jax.errors import ConfigError
from lora_jax.tasks import get_task
from tests.train.app import compose

FIX = Path(__file__).resolve().parents[1] / "fixtures"
SPLITS = {  # hub split -> fixture file
    "wikisql": {
        "train": "train.jsonl",
        "validation": "validation.jsonl",
        "test": "validation.jsonl",
    },
    "samsum": {"train": "train.jsonl", "validation": "validation.jsonl", "test": "test.jsonl"},
}


def _hub_layout(root: Path, task: str) -> Path:
    """A folder as the hub's refs/convert/parquet branch holds it: default/<split>/0000.parquet."""
    import datasets

    for split, name in SPLITS[task].items():
        rows = [json.loads(line) for line in (FIX / task / name).read_text().splitlines() if line]
        out = root / task / "default" / split
        out.mkdir(parents=True)
        datasets.Dataset.from_list(rows).to_parquet(str(out / "0000.parquet"))
    return root / task


@pytest.mark.parametrize("name", ["wikisql", "samsum"])
def test_the_default_source_is_the_parquet_conversion(name):
    cfg = compose([f"task={name}"])
    assert cfg.task.revision == "refs/convert/parquet"
    assert get_task(name).revision == "refs/convert/parquet"


@pytest.mark.parametrize("name", ["wikisql", "samsum"])
def test_hub_parquet_layout_loads_the_same_examples_as_the_files(name, tmp_path):
    hub = get_task(name, dataset=str(_hub_layout(tmp_path, name)))  # revision: the default
    files = get_task(name, data_dir=str(FIX / name))
    for split in ("train", "eval"):
        got, want = hub.load(split), files.load(split)
        assert len(got) == len(want) > 0
        assert [(e.source, e.target) for e in got] == [(e.source, e.target) for e in want]


def test_a_script_only_dataset_names_the_option_to_set(tmp_path):
    repo = tmp_path / "scripted"
    repo.mkdir()
    (repo / "scripted.py").write_text("import datasets\n")  # a loading script, nothing else
    with pytest.raises(ConfigError, match="task.revision=refs/convert/parquet"):
        get_task("samsum", dataset=str(repo), revision=None).load("train")


@pytest.mark.parametrize(
    "name,hub_id", [("wikisql", "Salesforce/wikisql"), ("samsum", "Samsung/samsum")]
)
def test_the_hub_id_is_asked_at_the_parquet_revision(name, hub_id, monkeypatch):
    """What `datasets` is asked for the real hub ids (unreachable here): the id, the split and
    the parquet revision; the rows it answers go through the task's parsing unchanged."""
    import datasets

    asked = []
    rows = [
        json.loads(line) for line in (FIX / name / "train.jsonl").read_text().splitlines() if line
    ]

    def fake_load_dataset(path, name=None, *, split=None, revision=None, **kw):
        asked.append((path, split, revision))
        return datasets.Dataset.from_list(rows)

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    got = get_task(name).load("train")
    assert asked == [(hub_id, "train", "refs/convert/parquet")]
    assert len(got) == len(rows)
