"""Bad overrides fail with messages that name the problem: config errors at composition (CLI
and compose API), bad paths and ranks at start-up, a diverging loss mid-run (results.json
says failed, the last good checkpoint survives)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hydra.errors import ConfigCompositionException
from omegaconf.errors import ConfigAttributeError, ValidationError

from tests.train.app import (
    compose,
    load_final_lora,
    read_results,
    run_app,
    run_in_process,
    tiny_overrides,
)


def _root_cause(e: BaseException) -> BaseException:
    while e.__cause__ is not None:
        e = e.__cause__
    return e


def test_unknown_key_fails_at_composition(tiny_e2e_gpt2_dir):
    with pytest.raises(ConfigCompositionException) as ei:
        compose(tiny_overrides(tiny_e2e_gpt2_dir, "lora.rank=4"))
    cause = _root_cause(ei.value)
    assert isinstance(cause, ConfigAttributeError)
    assert "lora.rank" in str(cause)


def test_wrong_type_fails_at_composition(tiny_e2e_gpt2_dir):
    with pytest.raises(ConfigCompositionException) as ei:
        compose(tiny_overrides(tiny_e2e_gpt2_dir, "lora.r=abc"))
    cause = _root_cause(ei.value)
    assert isinstance(cause, ValidationError)
    assert "abc" in str(cause) and "lora.r" in str(cause)


def test_cli_config_errors_are_readable(tiny_e2e_gpt2_dir):
    """From the command line: exit code 1, the message names the key, no Python traceback."""
    proc = run_app([*tiny_overrides(tiny_e2e_gpt2_dir), "lora.rank=4", "lora.r=abc"], timeout=120)
    assert proc.returncode == 1
    assert "lora.rank" in proc.stderr or "rank" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr


def test_missing_model_path(tiny_e2e_gpt2_dir, tmp_path):
    ov = tiny_overrides(tiny_e2e_gpt2_dir, "model.source=/nope/model")
    with pytest.raises(FileNotFoundError, match="/nope/model"):
        run_in_process(ov, tmp_path)
    res = read_results(tmp_path)
    assert res["status"] == "failed" and "/nope/model" in res["error"]


def test_rank_that_does_not_fit(tiny_e2e_gpt2_dir, tmp_path):
    with pytest.raises(ValueError, match=r"(?i)r=10000|rank") as ei:
        run_in_process(tiny_overrides(tiny_e2e_gpt2_dir, "lora.r=10000"), tmp_path)
    assert "32" in str(ei.value), ei.value  # names the layer size it exceeds
    assert read_results(tmp_path)["status"] == "failed"


def test_missing_data_dir(tiny_e2e_gpt2_dir, tmp_path):
    ov = tiny_overrides(
        tiny_e2e_gpt2_dir,
        "task=e2e",
        "task.data_dir=/nope/e2e",
        "task.options.coco_metrics=false",
        "task.max_len=128",
    )
    with pytest.raises(FileNotFoundError, match=r"task\.data_dir.*/nope/e2e"):
        run_in_process(ov, tmp_path)
    assert read_results(tmp_path)["status"] == "failed"


def test_nonfinite_loss_stops_and_keeps_last_good_checkpoint(tiny_e2e_gpt2_dir, tmp_path):
    from lora_jax.run.app import NonFiniteLoss

    ov = tiny_overrides(
        tiny_e2e_gpt2_dir, "optim.lr=1e30", "optim.warmup_steps=0", "optim.schedule=constant",
        "trainer.ckpt_every=1", "trainer.log_every=4", "trainer.eval_before=false",
    )  # fmt: skip
    with pytest.raises(NonFiniteLoss, match=r"loss became nan|loss became inf") as ei:
        run_in_process(ov, tmp_path)
    res = read_results(tmp_path)
    assert res["status"] == "failed" and "NonFiniteLoss" in res["error"]
    assert "optim.lr" in str(ei.value) and "trainer.resume=true" in str(ei.value)
    steps = sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit())
    assert steps, "no checkpoint survived"
    assert f"step {steps[-1]}" in str(ei.value)
    good = load_final_lora(tmp_path, tiny_e2e_gpt2_dir, ov)
    assert all(np.isfinite(v).all() for v in good.values())
    assert math.isfinite(res["run"]["wall_time_s"])
