"""Broken data files give errors that name the file, the line when known, and the fix, before
the dataset library sees them (or with its error chained): empty, header-only and non-UTF-8
CSV, broken JSON Lines, a WikiSQL column index out of range. Through the app, the run's
results.json keeps the full traceback."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lora_jax.tasks.base import load_rows

CASES = {  # file name, bytes → the message parts
    "empty csv": ("e.csv", b"", ["e.csv", "the file is empty"]),
    "blank csv": ("b.csv", b"\n\n", ["b.csv", "the file is empty"]),
    "header-only csv": ("h.csv", b"mr,ref\n", ["h.csv", "only a header line", "no data rows"]),
    "latin-1 csv": ("l.csv", "mr,ref\nname[x],café\n".encode("latin-1"),
                    ["l.csv, line 2, column 12", "not UTF-8", "iconv"]),
    "broken jsonl": ("j.jsonl", b'{"a": "x"}\n\n{"a": "y\n', ["j.jsonl, line 3", "not valid JSON",
                                                              "fix or remove that line"]),
    "empty jsonl": ("z.jsonl", b"", ["z.jsonl", "the file is empty"]),
    "broken json lines in .json": ("k.json", b'{"a": 1}\n{"a": \n', ["k.json, line 2", "not valid JSON"]),
}  # fmt: skip


@pytest.mark.parametrize("case", list(CASES))
def test_broken_data_file_names_file_line_and_fix(case, tmp_path):
    name, data, parts = CASES[case]
    (tmp_path / name).write_bytes(data)
    with pytest.raises(ValueError) as ei:
        load_rows([str(tmp_path / name)], None, "train")
    for p in parts:
        assert p in str(ei.value), str(ei.value)
    assert str(tmp_path) in str(ei.value)


def test_valid_files_still_load(tmp_path):
    (tmp_path / "ok.csv").write_bytes("mr,ref\nname[café],NA\n".encode())
    (tmp_path / "ok.json").write_text(json.dumps([{"a": 1}, {"a": 2}]))
    assert load_rows([str(tmp_path / "ok.csv")], None, "train") == [
        {"mr": "name[café]", "ref": "NA"}
    ]
    assert load_rows([str(tmp_path / "ok.json")], None, "train") == [{"a": 1}, {"a": 2}]


def test_wikisql_column_index_out_of_range(tmp_path):
    from lora_jax.tasks import get_task

    row = json.loads(Path("tests/fixtures/wikisql/validation.jsonl").read_text().splitlines()[0])
    n = len(row["table"]["header"])
    row["sql"]["sel"] = n + 3
    (tmp_path / "validation.jsonl").write_text(json.dumps(row) + "\n")
    task = get_task("wikisql", data_files={"eval": str(tmp_path / "validation.jsonl")})
    with pytest.raises(ValueError) as ei:
        task.load("eval")
    msg = str(ei.value)
    assert "validation.jsonl: example 0" in msg and f"sel={n + 3}" in msg
    assert f"the table has {n} columns (0..{n - 1}" in msg


def test_app_keeps_the_traceback_in_results(tiny_e2e_gpt2_dir, tmp_path):
    from tests.train.app import read_results, run_in_process, tiny_overrides

    (tmp_path / "train.csv").write_bytes(b"mr,ref\n")
    (tmp_path / "test.csv").write_bytes(b"mr,ref\nname[x],y\n")
    ov = tiny_overrides(
        tiny_e2e_gpt2_dir, "task=e2e", "task.options.coco_metrics=false", "task.max_len=128",
        f"task.data_files.train={tmp_path / 'train.csv'}", f"task.data_files.eval={tmp_path / 'test.csv'}",
        "trainer.eval_before=false",
    )  # fmt: skip
    run_dir = tmp_path / "run"
    with pytest.raises(ValueError, match=r"train\.csv: only a header line"):
        run_in_process(ov, run_dir)
    res = read_results(run_dir)
    assert res["status"] == "failed" and "train.csv: only a header line" in res["error"]
    assert "Traceback" in res["traceback"] and "check_text_file" in res["traceback"]
