"""Config values out of range fail before the model loads, each named with its allowed range
(lora_jax/config_check.py); dict-valued options are settable from the real command line; a run
dir is never shared by two processes."""

from __future__ import annotations

import pytest

from lora_jax.train.checks import ConfigError
from tests.train.app import compose, read_results, run_app, run_in_process, tiny_overrides

BAD = {  # override → the message it must give
    "optim.lr=-1e-3": "optim.lr=-0.001: must be > 0",
    "optim.lr=0": "optim.lr=0.0: must be > 0",
    "optim.warmup_steps=-5": "optim.warmup_steps=-5: must be >= 0",
    "optim.label_smoothing=2.0": "optim.label_smoothing=2.0: must be in [0, 1)",
    "optim.grad_accum=0": "optim.grad_accum=0: must be >= 1",
    "trainer.epochs=-1": "trainer.epochs=-1.0: must be > 0",
    "trainer.max_steps=0": "trainer.max_steps=0: must be >= 1",
    "trainer.log_every=0": "trainer.log_every=0: must be >= 1",
    "trainer.eval_every=0": "trainer.eval_every=0: must be >= 1",
    "trainer.ckpt_every=0": "trainer.ckpt_every=0: must be >= 1",
    "trainer.ckpt_keep=0": "trainer.ckpt_keep=0: must be >= 1",
    "task.max_eval_items=0": "task.max_eval_items=0: must be >= 1, or null for all",
    "task.max_train_examples=0": "task.max_train_examples=0: must be >= 1, or null for all",
    "lora.dropout=1.5": "lora.dropout=1.5: must be in [0, 1)",
    "lora.alpha=-2": "lora.alpha=-2.0: must be > 0",
}


@pytest.mark.parametrize("override", list(BAD))
def test_out_of_range_value_is_refused_before_the_model_loads(
    override, tiny_e2e_gpt2_dir, tmp_path
):
    ov = tiny_overrides(tiny_e2e_gpt2_dir, "trainer.eval_before=true", override)
    with pytest.raises(ConfigError) as ei:
        run_in_process(ov, tmp_path)
    assert BAD[override] in str(ei.value)
    res = read_results(tmp_path)
    assert res["status"] == "failed" and BAD[override] in res["error"]
    assert res["params"] == {}  # the model never loaded: no LoRA tree was built
    assert not list(tmp_path.glob("predictions*")) and not list(
        (tmp_path / "checkpoints").iterdir()
    )


def test_every_problem_is_listed_at_once(tiny_e2e_gpt2_dir, tmp_path):
    ov = tiny_overrides(
        tiny_e2e_gpt2_dir, "optim.lr=-1", "trainer.log_every=0", "optim.grad_accum=0"
    )
    with pytest.raises(ConfigError) as ei:
        run_in_process(ov, tmp_path)
    for key in ("optim.lr", "trainer.log_every", "optim.grad_accum"):
        assert key in str(ei.value)


def test_max_len_beyond_the_models_positions(tiny_e2e_gpt2_dir, tmp_path):
    """The tiny GPT-2 has 256 positions; before any step (no NaN at step 1)."""
    with pytest.raises(ConfigError, match=r"task\.max_len=300: must be <= 256.*task\.max_len=256"):
        run_in_process(tiny_overrides(tiny_e2e_gpt2_dir, "task.max_len=300"), tmp_path)
    assert (
        "train" not in read_results(tmp_path)["metrics"]
        or not read_results(tmp_path)["metrics"]["train"]
    )


def test_cli_dict_options_and_errors_without_traceback(tiny_e2e_gpt2_dir, tmp_path):
    """Through the real command-line parser: data_files per key, a regex rank_pattern key
    (escaped parentheses) and an alpha_pattern, all without ``+``; then a bad value exits 1
    with the message and no Python traceback."""
    proc = run_app(
        ["model=local", f"model.source={tiny_e2e_gpt2_dir}", "task=samsum", "task.data_files.train=s.jsonl",
         "task.data_files.eval=t.jsonl", r"lora.rank_pattern={h_\(0|1\)\.attn:4, h_2:2}",
         r"lora.alpha_pattern={h_0\..*:16}", "--cfg", "job", "--resolve"],
        timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    from omegaconf import OmegaConf

    cfg = OmegaConf.create(proc.stdout[proc.stdout.index("model:") :])
    assert dict(cfg.task.data_files) == {"train": "s.jsonl", "eval": "t.jsonl"}
    assert dict(cfg.lora.rank_pattern) == {r"h_(0|1)\.attn": 4, "h_2": 2}
    assert dict(cfg.lora.alpha_pattern) == {r"h_0\..*": 16}

    proc = run_app([*tiny_overrides(tiny_e2e_gpt2_dir, "optim.lr=-1"), f"hydra.run.dir={tmp_path}"])
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1 and "optim.lr=-1.0: must be > 0" in out, out[-3000:]
    assert "Traceback" not in out and "results.json" in out
    assert "Traceback" in read_results(tmp_path)["traceback"]


def test_a_run_dir_in_use_is_refused(tiny_e2e_gpt2_dir, tmp_path):
    from lora_jax.run.guard import RunDirInUse, RunDirLock

    with RunDirLock(tmp_path), pytest.raises(RunDirInUse, match="in use by another process"):
        run_in_process(tiny_overrides(tiny_e2e_gpt2_dir), tmp_path)
    assert not (tmp_path / "results.json").exists()


def test_run_dirs_started_in_the_same_second_differ(tiny_e2e_gpt2_dir):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from tests.train.app import CONF_DIR

    compose([])  # registers the schema
    dirs = set()
    for _ in range(3):
        with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
            cfg = hydra_compose(config_name="config", return_hydra_config=True)
            dirs.add(cfg.hydra.run.dir)
    assert len(dirs) == 3, dirs
