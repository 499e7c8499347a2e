"""A training run with sequence packing (data.packing=true, here data.pack=step: each step in one
row attended in blocks of task.max_len) logs the same loss at every step as the same run with
padded rows, on fewer token positions, and says so in its record. (data.pack=rows, the default,
runs in tests/train/test_resume.py and tests/tasks/test_packing.py.)

Precision: fp32, precision.matmul=highest (full fp32 dots); the two runs sum the same terms in
different orders, and Adam carries the last-bit differences forward, so losses agree to 1e-5
relative over 12 steps (measured: ~1e-6).
"""

from __future__ import annotations

import numpy as np

from tests.train.app import run_in_process, tiny_overrides


def test_packed_run_logs_the_padded_runs_losses(tiny_e2e_gpt2_dir, tmp_path):
    ov = tiny_overrides(tiny_e2e_gpt2_dir, "trainer.log_every=1", "trainer.eval_before=false",
                        "task.max_eval_items=1", "task.decode.max_new_tokens=2",
                        "trainer.val_examples=16", "precision.matmul=highest", "lora=all",
                        "optim.lr=1e-2", "task.max_len=64")  # fmt: skip
    res = {p: run_in_process([*ov, f"data.packing={p}", "data.pack=step", "data.step_multiple=16"],
                             tmp_path / p) for p in ("true", "false")}  # fmt: skip
    packed, padded = res["true"], res["false"]
    assert packed["data"]["packing"] is True and padded["data"]["packing"] is False
    assert packed["data"]["pack"] == "step"
    lp = np.array(packed["metrics"]["train"]["losses"])
    lu = np.array(padded["metrics"]["train"]["losses"])
    assert len(lp) == 12 and lp[-1, 1] < lp[0, 1] - 0.1  # it trained
    np.testing.assert_array_equal(lp[:, 0], lu[:, 0])
    np.testing.assert_allclose(lp[:, 1], lu[:, 1], rtol=1e-5)
    vp, vu = packed["metrics"]["validation"]["loss"], padded["metrics"]["validation"]["loss"]
    assert abs(vp - vu) <= 1e-5 * vu
    tp, tu = packed["metrics"]["train"], padded["metrics"]["train"]
    assert tp["tokens_seen"] == tu["tokens_seen"]  # the same examples
    assert tp["positions_seen"] < tu["positions_seen"]  # in fewer token positions
    assert tp["real_token_fraction"] > tu["real_token_fraction"]
    assert tp["positions_seen"] > 12 * 2 * 64  # rows over 2 blocks: attended in blocks
