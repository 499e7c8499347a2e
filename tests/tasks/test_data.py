"""Loading E2E/WikiSQL/SAMSum through `datasets` from local files; bad input errors."""

from pathlib import Path

import pytest

from lora_jax.tasks import get_task

E2E_DIR = Path("/work/shared/data/e2e")
FIXTURES = Path(__file__).parents[1] / "fixtures"


@pytest.mark.skipif(not (E2E_DIR / "devset.csv").is_file(), reason="E2E CSVs not present")
def test_real_e2e_files_load_with_the_published_counts():
    task = get_task("e2e", data_dir=str(E2E_DIR), train_file="devset.csv")
    train, test = task.load("train"), task.load("eval")
    assert (len(train), len(task.eval_groups(train))) == (4672, 547)
    items = task.eval_groups(test)
    assert (len(test), len(items)) == (4693, 630)
    assert sum(len(it.references) for it in items) == 4693
    assert train[0].source == "name[Alimentum], area[city centre], familyFriendly[no]"


def _csv(tmp_path, text):
    path = tmp_path / "data.csv"
    path.write_text(text, encoding="utf-8")
    return str(path)


def test_e2e_groups_in_order_of_first_appearance_and_keeps_na_text(tmp_path):
    path = _csv(
        tmp_path, 'mr,ref\n"name[B], area[x]",NA\n"name[A]",One.\n"name[B], area[x]",Two.\n'
    )
    task = get_task("e2e", dataset=None, data_files={"eval": path})
    items = task.eval_groups(task.load("eval"))
    assert [it.source for it in items] == ["name[B], area[x]", "name[A]"]
    assert items[0].references == ("NA", "Two.")


def test_e2e_empty_reference_names_file_and_row(tmp_path):
    path = _csv(tmp_path, 'mr,ref\n"name[A]",One.\n"name[A]",\n')
    task = get_task("e2e", dataset=None, data_files={"eval": path})
    with pytest.raises(ValueError, match=r"data\.csv: row 3 has an empty reference"):
        task.load("eval")


def test_e2e_wrong_columns_and_missing_file(tmp_path):
    path = _csv(tmp_path, "input,output\nx,y\n")
    task = get_task("e2e", dataset=None, data_files={"eval": path})
    with pytest.raises(ValueError, match=r"expected a column named one of \['mr'"):
        task.load("eval")
    task = get_task("e2e", dataset=None, data_dir=str(tmp_path))
    with pytest.raises(FileNotFoundError, match="testset_w_refs.csv"):
        task.load("eval")


def test_unknown_task_and_setting():
    with pytest.raises(ValueError, match="unknown task"):
        get_task("mnli")
    with pytest.raises(ValueError, match="no setting"):
        get_task("e2e", data_dri="x")


def test_wikisql_fixture_through_datasets():
    task = get_task("wikisql", data_dir=str(FIXTURES / "wikisql"))
    train, val = task.load("train"), task.load("eval")
    assert (len(train), len(val)) == (3, 4)
    assert val[0].target == (
        """SELECT COUNT("Player") FROM table WHERE "Position" = 'Guard-Forward' """
        """AND "Nationality" = 'United States'"""
    )
    items = task.eval_groups(val)
    assert task.score([e.target for e in val], items) == {"lf_acc": 1.0, "ex_acc": 1.0}


def test_samsum_fixture_joins_utterances_with_newlines():
    task = get_task("samsum", data_dir=str(FIXTURES / "samsum"))
    test = task.load("eval")
    assert len(test) == 3
    assert test[0].source.split("\n")[1] == "Ben: Yes, at the cafe by the station."
    assert task.prompt(test[0].source).endswith("\n\n")
    scores = task.score([e.target for e in test], task.eval_groups(test))
    assert scores["rouge1"] == scores["rouge2"] == scores["rougeL"] == pytest.approx(1.0)
