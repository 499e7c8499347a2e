"""The committed fair study (experiments/results/study_fair_smollm2) is reproduced by
`python -m lora_jax.report` from its committed records: the same commands as the script's report
part, written to a temporary folder, give the committed tables byte for byte."""

from __future__ import annotations

from pathlib import Path

import pytest

from lora_jax.report.cli import main as report

ROOT = Path(__file__).resolve().parents[2]
STUDY = ROOT / "experiments/results/study_fair_smollm2"
RECORDS = STUDY / "records"
SEL = ["--select-by", "val_loss", "--select-seeds", "0"]

# (arguments after the record folders, the committed folder they wrote) as in
# experiments/study_fair_smollm2.sh's report part
CASES = {
    "table": (["rank", "full"], [*SEL], "", ["report.md", "report.csv"]),
    "rouge_l": (["rank", "full"], [*SEL, "--metric", "rouge_l"], "rouge_l", ["report.md"]),
    "matched": (["rank", "matched"], [*SEL, "--match-params", "--match-tol", "0.02"], "matched",
                ["matched.md", "matched.csv"]),
    "val_loss": (["rank", "full"], [*SEL, "--metric", "validation.loss"], "val_loss",
                 ["report.md"]),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(CASES))
def test_committed_study_tables_come_back_from_the_records(case: str, tmp_path: Path) -> None:
    parts, args, sub, files = CASES[case]
    assert (STUDY / "report.md").is_file(), "the study's report part has not been committed"
    code = report([*(str(RECORDS / p) for p in parts), *args, "--out", str(tmp_path),
                   "--no-plots"])  # fmt: skip
    assert code == 0
    for name in files:
        committed = (STUDY / sub / name).read_text()
        assert (tmp_path / name).read_text() == committed, f"{sub or '.'}/{name} differs"


@pytest.mark.parametrize(
    ("a", "b", "metric"),
    [("targets=gate,up,down r=8 lr=3e-3", "targets=q,k,v,o r=13 lr=3e-3", "bleu"),
     ("targets=gate,up,down r=8 lr=3e-3", "targets=q,k,v,o r=13 lr=3e-3", "validation.loss"),
     ("targets=q,v r=8 lr=3e-3", "method=full lr=3e-4", "rouge_l")],
)  # fmt: skip
def test_committed_paired_tests_come_back_from_the_records(a, b, metric, capsys) -> None:
    parts = [str(RECORDS / p) for p in ("rank", "matched", "full")]
    assert report([*parts, "--compare", a, b, "--metric", metric]) == 0
    section = capsys.readouterr().out.strip()
    assert section.startswith("# Paired")
    assert section in (STUDY / "compare.md").read_text()
