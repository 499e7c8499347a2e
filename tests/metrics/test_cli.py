"""python -m lora_jax.metrics on small files."""

import json
from pathlib import Path

from lora_jax.metrics.__main__ import main

FIXTURES = Path(__file__).parents[1] / "fixtures"


def test_e2e_cli_and_count_mismatch(tmp_path, capsys):
    refs = tmp_path / "refs.csv"
    refs.write_text('mr,ref\n"name[A]",A is a pub.\n"name[A]",A is a bar.\n"name[B]",B is cheap.\n')
    hyp = tmp_path / "hyp.txt"
    hyp.write_text("A is a pub.\nB is cheap.\n")
    assert main(["e2e", "--hyp", str(hyp), "--refs", str(refs), "--no-coco"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["bleu"] == 1.0 and out["meteor"] is None and "meteor_unavailable" in out
    hyp.write_text("A is a pub.\n")
    assert main(["e2e", "--hyp", str(hyp), "--refs", str(refs), "--no-coco"]) == 2
    err = capsys.readouterr().err
    assert "1 hypothesis lines" in err and "2 distinct MRs" in err


def test_wikisql_and_samsum_cli(tmp_path, capsys):
    hyp = tmp_path / "sql.txt"
    hyp.write_text(
        """SELECT COUNT("Player") FROM table WHERE "Nationality" = 'united states' """
        """AND "Position" = 'Guard-Forward'\nnot sql\n"""
        """SELECT SUM("Attendance") FROM table WHERE "Week" > '1' AND "Opponent" = 'Chicago Bears'\n"""
        """SELECT "Player" FROM table WHERE "No." = '33'\n"""
    )
    assert (
        main(["wikisql", "--hyp", str(hyp), "--data", str(FIXTURES / "wikisql/validation.jsonl")])
        == 0
    )
    assert json.loads(capsys.readouterr().out) == {"lf_acc": 0.75, "ex_acc": 0.75}
    hyp = tmp_path / "sum.txt"
    hyp.write_text("x\ny\nz\n")
    assert main(["samsum", "--hyp", str(hyp), "--data", str(FIXTURES / "samsum/test.jsonl")]) == 0
    assert json.loads(capsys.readouterr().out)["rouge1"] == 0.0
    assert main(["samsum", "--hyp", str(tmp_path / "missing.txt"), "--data", "x.jsonl"]) == 2
