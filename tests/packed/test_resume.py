"""Pack checkpoint/resume: a pack stopped after 2 of 4 steps (``trainer.stop_after``) and resumed
ends with the same losses and predictions as the uninterrupted pack (LoRA dropout on, so the
per-job rng streams must resume too)."""

from __future__ import annotations

import pytest

from lora_jax.packed.runner import run_pack
from tests.train.app import compose, tiny_overrides

JOBS = (["lora=qv", "lora.r=1", "seed=0"], ["lora=all", "lora.r=4", "seed=1"])


def _cfgs(model_dir, *extra):
    common = ["trainer.max_steps=4", "trainer.batch_size=4", "trainer.eval_before=false",
              "trainer.data_seed=0", "lora.dropout=0.1", "trainer.ckpt_every=2",
              "task.max_eval_items=2", "task.decode.max_new_tokens=4", "trainer.val_examples=8"]  # fmt: skip
    return [compose(tiny_overrides(model_dir, *common, *job, *extra)) for job in JOBS]


def test_stopped_pack_resumes_to_the_uninterrupted_result(tiny_e2e_gpt2_dir, tmp_path):
    dirs = lambda tag: [tmp_path / tag / str(i) for i in range(len(JOBS))]
    full = run_pack(_cfgs(tiny_e2e_gpt2_dir), dirs("full"), tmp_path / "full" / "pack")
    part = run_pack(
        _cfgs(tiny_e2e_gpt2_dir, "trainer.stop_after=2"), dirs("res"), tmp_path / "res" / "pack"
    )
    assert [p["run"].get("stopped_at") for p in part] == [2, 2]
    res = run_pack(
        _cfgs(tiny_e2e_gpt2_dir, "trainer.resume=true"), dirs("res"), tmp_path / "res" / "pack"
    )
    for a, b, da, db in zip(full, res, dirs("full"), dirs("res")):
        assert a["status"] == b["status"] == "ok"
        assert b["metrics"]["train"]["losses"][-1][1] == pytest.approx(
            a["metrics"]["train"]["final_loss"], rel=1e-6
        )
        assert (da / "predictions_eval.txt").read_text() == (
            db / "predictions_eval.txt"
        ).read_text()
    # a finished job is kept as it is on a further resume (per-job resume)
    again = run_pack(
        _cfgs(tiny_e2e_gpt2_dir, "trainer.resume=true"), dirs("res"), tmp_path / "res" / "pack"
    )
    assert [r["run"]["finished"] for r in again] == [r["run"]["finished"] for r in res]
