"""The training app with every memory lever on (scan over layers, full remat, chunked loss)
logs the same losses as without them: the config keys reach the step and change nothing
numerically."""

from __future__ import annotations

import numpy as np

from tests.train.app import run_in_process, tiny_overrides

BASE = ["lora=all", "lora.r=4", "optim.lr=3e-2", "trainer.max_steps=4", "trainer.log_every=1",
        "trainer.eval_before=false", "task.max_eval_items=1", "task.decode.max_new_tokens=2"]  # fmt: skip
LEVERS = ["trainer.scan=true", "trainer.remat=full", "trainer.loss_chunk=64"]


def test_scan_remat_chunked_loss_train_like_the_plain_step(tiny_e2e_gpt2_dir, tmp_path):
    plain = run_in_process(tiny_overrides(tiny_e2e_gpt2_dir, *BASE), tmp_path / "a")
    levers = run_in_process(tiny_overrides(tiny_e2e_gpt2_dir, *BASE, *LEVERS), tmp_path / "b")
    a = np.array(plain["metrics"]["train"]["losses"])
    b = np.array(levers["metrics"]["train"]["losses"])
    assert a.shape == b.shape == (4, 2)
    assert a[-1, 1] < a[0, 1]  # it trains
    np.testing.assert_allclose(b, a, rtol=1e-4)
