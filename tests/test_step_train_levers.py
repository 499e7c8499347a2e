"""The training app with every memory lever on (scan over layers, full remat, chunked loss)
logs the same losses as without them: the config keys reach the step and change nothing
numerically. The scan run holds the frozen base once (stacked), in training and in evaluation
(decoding and the validation loss read the stacked arrays), and decodes what the loop run
decodes."""

from __future__ import annotations

import gc

import jax
import numpy as np

from lora_jax.train import adapters, engine
from tests.train.app import run_in_process, tiny_overrides

BASE = ["lora=all", "lora.r=4", "optim.lr=3e-2", "trainer.max_steps=4", "trainer.log_every=1",
        "trainer.eval_before=false", "task.max_eval_items=1", "task.decode.max_new_tokens=2",
        "trainer.val_examples=8", "trainer.val_decode_items=2",
        "data.packing=false", "trainer.bucket_step=128"]  # one padded shape: one compile per step kind  # fmt: skip
LEVERS = ["trainer.scan=true", "trainer.remat=full", "trainer.loss_chunk=64"]


def _live_bytes() -> int:
    gc.collect()
    return sum(x.nbytes for x in jax.live_arrays() if not x.is_deleted())


def _probe(monkeypatch) -> dict:
    """Device bytes the run holds (live jax arrays minus those alive when it loaded the model)
    inside the first train step call, and when it starts evaluating; the frozen base's bytes."""
    seen: dict = {}
    load, make_step, decode = engine.load_for_run, adapters.make_train_step, engine.decode_items

    def load_model(*a, **k):
        seen["base"] = _live_bytes()
        lm = load(*a, **k)
        seen["frozen"] = sum(x.nbytes for x in jax.tree.leaves(lm.params))
        return lm

    def make_train_step(*a, **k):
        step = make_step(*a, **k)

        def probed(*args):
            seen.setdefault("train", _live_bytes() - seen["base"])
            seen["lora"] = sum(x.nbytes for x in jax.tree.leaves(args[0]))
            return step(*args)

        return probed

    def decode_probed(*a, **k):
        seen.setdefault("eval", _live_bytes() - seen["base"])
        return decode(*a, **k)

    monkeypatch.setattr(engine, "load_for_run", load_model)
    monkeypatch.setattr(adapters, "make_train_step", make_train_step)
    monkeypatch.setattr(engine, "decode_items", decode_probed)
    return seen


def test_scan_remat_chunked_loss_train_like_the_plain_step(
    tiny_e2e_gpt2_dir, tmp_path, monkeypatch
):
    held = {}
    held["plain"] = _probe(monkeypatch)
    plain = run_in_process(tiny_overrides(tiny_e2e_gpt2_dir, *BASE), tmp_path / "a")
    held["levers"] = _probe(monkeypatch)
    levers = run_in_process(tiny_overrides(tiny_e2e_gpt2_dir, *BASE, *LEVERS), tmp_path / "b")
    a = np.array(plain["metrics"]["train"]["losses"])
    b = np.array(levers["metrics"]["train"]["losses"])
    assert a.shape == b.shape == (4, 2)
    assert a[-1, 1] < a[0, 1]  # it trains
    np.testing.assert_allclose(b, a, rtol=1e-4)
    va, vb = plain["metrics"]["validation"]["loss"], levers["metrics"]["validation"]["loss"]
    np.testing.assert_allclose(vb, va, rtol=1e-4)
    # the decoded validation metric (trainer.val_decode_items), from held-out training sources
    for rec in (plain, levers):
        assert rec["data"]["validation"]["split"] == "train-holdout"
        assert rec["metrics"]["validation"]["decoded_items"] == 2
    assert plain["metrics"]["validation"]["bleu"] == levers["metrics"]["validation"]["bleu"]
    assert (tmp_path / "b" / "predictions_eval.txt").read_text() == (
        tmp_path / "a" / "predictions_eval.txt"
    ).read_text()
    # One copy of the frozen base: the scan run holds what the loop run holds (the LoRA tree,
    # its optimizer state and one base), not a stacked base beside the per-layer one; in
    # evaluation, plus the LoRA tree stacked to match the base (a copy of the small tree).
    frozen, lora = held["plain"]["frozen"], held["plain"]["lora"]
    assert lora < 0.2 * frozen
    for when, extra in (("train", 0), ("eval", lora)):
        p, s = held["plain"][when], held["levers"][when]
        assert p >= frozen, (when, p, frozen)
        assert abs(s - p - extra) < 0.05 * frozen, (when, s, p, extra, frozen)
