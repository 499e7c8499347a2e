"""The synthetic E2E sample: the challenge CSV format, loadable by the E2E task."""

from lora_jax.tasks import get_task
from lora_jax.tasks.sample import write_e2e_sample


def test_sample_loads_like_the_challenge_files(tmp_path):
    train_csv, test_csv = write_e2e_sample(tmp_path, n_train_mrs=50, n_test_mrs=10, seed=0)
    task = get_task(
        "e2e", dataset=None, data_files={"train": str(train_csv), "eval": str(test_csv)}
    )
    train, test = task.eval_groups(task.load("train")), task.eval_groups(task.load("eval"))
    assert (len(train), len(test)) == (50, 10)
    assert all(1 <= len(it.references) <= 3 for it in train + test)
    assert not {it.source for it in train} & {it.source for it in test}
    for it in test:
        name = it.source.split("]")[0].removeprefix("name[")
        assert all(ref.startswith(name) for ref in it.references)
    again = write_e2e_sample(tmp_path / "again", 50, 10, seed=0)
    assert again[1].read_text() == test_csv.read_text()
