"""Sequence packing (data.packing): the same examples give the same loss and gradients packed
into rows as padded one per row, and no token sees another example.

Precision: fp32 with jax_default_matmul_precision "highest" (full fp32 dots on every backend);
packed and padded runs sum the same terms in a different order, so they agree to fp32
rounding: 1e-5 relative to each compared array's largest entry (measured ~1e-7).
"""

from __future__ import annotations

import jax
import numpy as np
import optax
import pytest

import lora_jax.lora as L
from lora_jax.models.config import ModelConfig
from lora_jax.models.registry import build_model
from lora_jax.tasks.batching import (
    PackedRowBatches,
    TrainBatches,
    balance,
    first_fit,
    pack_examples,
    pack_step,
)
from lora_jax.train.step import make_loss, make_train_step

LLAMA = ModelConfig(
    model_type="llama", vocab_size=97, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2,
    head_dim=8, intermediate_size=48, max_position_embeddings=64, tie_word_embeddings=False,
)  # fmt: skip
GPT2 = ModelConfig(
    model_type="gpt2", vocab_size=97, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=4,
    head_dim=8, intermediate_size=128, max_position_embeddings=64, tie_word_embeddings=True,
)  # fmt: skip
MODULES = {
    "llama": {"self_attn.q_proj": ("q",), "self_attn.k_proj": ("k",),
              "self_attn.v_proj": ("v",), "self_attn.o_proj": ("o",), "mlp.gate_proj": ("gate",),
              "mlp.up_proj": ("up",), "mlp.down_proj": ("down",)},
    "gpt2": {"attn.c_attn": ("q", "k", "v"), "attn.c_proj": ("o",), "mlp.c_fc": ("up",),
             "mlp.c_proj": ("down",)},
}  # fmt: skip
ROW = 32
TOL = 1e-5


def _examples(vocab: int, lengths, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    out = []
    for n in lengths:
        ids = rng.integers(1, vocab, n).tolist()
        loss = [0.0] * (n // 2) + [1.0] * (n - n // 2)  # prompt, then target tokens
        out.append({"input_ids": ids, "loss_mask": loss})
    return out


def _padded(examples: list[dict], t: int = ROW) -> dict:
    b = len(examples)
    ids = np.zeros((b, t), np.int32)
    attn = np.zeros((b, t), np.int32)
    loss = np.zeros((b, t), np.float32)
    for i, e in enumerate(examples):
        n = len(e["input_ids"])
        ids[i, :n], attn[i, :n], loss[i, :n] = e["input_ids"], 1, e["loss_mask"]
    return {"input_ids": ids, "attention_mask": attn, "loss_mask": loss}


def _setup(cfg: ModelConfig):
    module = build_model(cfg)
    params = jax.jit(module.init)(jax.random.key(0), np.zeros((1, 8), np.int32))["params"]
    lora, _ = L.init(jax.random.key(1), params, L.LoraConfig(r=4, targets="all"),
                     MODULES[cfg.model_type])  # fmt: skip
    lora = jax.tree.map(lambda x: x + 0.05 if x.ndim == 2 else x, lora)  # B != 0
    return module, params, lora


def _rel(a, b) -> float:
    a, b = np.asarray(a), np.asarray(b)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


# lengths: very different, one exactly filling a row (32), a 2-token example
LENGTHS = [5, 32, 17, 2, 11, 23, 9, 14]


def test_first_fit_and_layout():
    assert first_fit([5, 32, 17, 2, 11], 32) == [[0, 2, 3], [1], [4]]
    ex = _examples(97, [3, 4, 32])
    b = pack_examples(ex, ROW)
    assert b["input_ids"].shape == (2, ROW)  # [3, 4] share a row; 32 fills the other
    np.testing.assert_array_equal(b["segment_ids"][0, :8], [1, 1, 1, 2, 2, 2, 2, 0])
    np.testing.assert_array_equal(b["positions"][0, :8], [0, 1, 2, 0, 1, 2, 3, 0])
    np.testing.assert_array_equal(b["positions"][1], np.arange(ROW))
    assert b["loss_mask"][0, 3] == 0.0 and b["loss_mask"][1, 0] == 0.0  # segment starts
    assert b["attention_mask"].sum() == 3 + 4 + 32
    assert pack_examples(ex, ROW, row_multiple=4)["input_ids"].shape == (4, ROW)
    with pytest.raises(Exception, match="does not fit a row"):
        pack_examples(_examples(97, [33]), ROW)


def test_pack_step_layout():
    """data.pack=step: the step's examples in exactly ``rows`` rows balanced by tokens, each row
    the fullest row's tokens rounded up to the multiple."""
    assert balance([5, 32, 17, 2], 2) == [[1], [0, 2, 3]]  # 32 | 17+5+2 = 24, longest first
    assert balance([3, 3, 3], 1) == [[0, 1, 2]]
    ex = _examples(97, LENGTHS)  # 113 tokens
    one = pack_step(ex, rows=1, multiple=16)
    assert one["input_ids"].shape == (1, 128)  # 113 rounded up to 16
    assert one["attention_mask"].sum() == sum(LENGTHS)
    assert one["segment_ids"].max() == len(LENGTHS)
    # examples keep their order within the row, positions restart per example
    np.testing.assert_array_equal(one["positions"][0, :7], [0, 1, 2, 3, 4, 0, 1])
    np.testing.assert_array_equal(one["input_ids"][0, :5], ex[0]["input_ids"])
    two = pack_step(ex, rows=2, multiple=16)
    assert two["input_ids"].shape == (2, 64)  # 57 | 56 tokens, 64 each
    batches = PackedRowBatches(ex * 4, 8, seed=1, row_len=ROW, row_multiple=2, step_multiple=16)
    for step in range(4):
        b = batches.batch_at(step)
        assert b["input_ids"].shape[0] == 2 and b["input_ids"].size == batches.positions_at(step)
        assert b["input_ids"].shape[1] % 16 == 0


STEP_CASES = [(GPT2, "rows"), (LLAMA, "rows"), (GPT2, "step"), (LLAMA, "step"),
              (LLAMA.replace(sliding_window=6), "step")]  # fmt: skip


@pytest.mark.parametrize("cfg,pack", STEP_CASES,
                         ids=["gpt2", "llama", "gpt2-step", "llama-step", "llama-window-step"])  # fmt: skip
def test_packed_loss_and_grads_equal_padded(cfg, pack):
    """data.pack=step: one 128-token row (113 real) attended in blocks of 32 (the longest
    example: cfg.packed_block), each block's queries over its and the previous block's keys."""
    if pack == "step":
        cfg = cfg.replace(packed_block=ROW)
    module, params, lora = _setup(cfg)
    ex = _examples(cfg.vocab_size, LENGTHS)
    packed = pack_examples(ex, ROW) if pack == "rows" else pack_step(ex, rows=1, multiple=16)
    padded = _padded(ex)
    assert packed["input_ids"].shape[0] < len(ex)  # it did pack
    loss_fn = make_loss(module)

    def value_grad(batch):
        f = lambda lo: loss_fn({"params": params, "lora": lo}, batch, None)
        return jax.jit(jax.value_and_grad(f, has_aux=True))(lora)

    with jax.default_matmul_precision("highest"):
        (lp, ap), gp = value_grad(packed)
        (lu, au), gu = value_grad(padded)
    assert float(ap["tokens"]) == float(au["tokens"]) > 0
    assert abs(float(lp) - float(lu)) <= TOL * abs(float(lu))
    pairs = [(a, b) for a, b in zip(jax.tree.leaves(gp), jax.tree.leaves(gu)) if np.ndim(b)]
    assert len(pairs) >= 8  # the A and B factors of every adapted module
    # relative to the gradient's largest entry (~1e-2 here): one GPT-2 leaf's gradient is
    # ~1e-9 in both runs, rounding noise that two summation orders do not share
    scale = max(float(np.abs(np.asarray(b)).max()) for _, b in pairs)
    for a, b in pairs:
        assert float(np.abs(np.asarray(a) - np.asarray(b)).max()) <= TOL * scale


def test_packed_steps_with_grad_accum_equal_padded():
    """Three AdamW updates, each accumulated over two micro-batches (optax.MultiSteps, as
    optim.grad_accum does): the adapters after packed micro-batches equal the padded ones."""
    module, params, lora = _setup(LLAMA)
    tx = optax.MultiSteps(optax.adamw(1e-2), every_k_schedule=2)
    step = make_train_step(module, tx, jit=True)
    micro = [_examples(LLAMA.vocab_size, LENGTHS, seed=s) for s in range(6)]
    out = {}
    with jax.default_matmul_precision("highest"):
        for name, make in (("packed", lambda e: pack_examples(e, ROW)), ("padded", _padded)):
            lo = jax.tree.map(np.array, lora)
            opt = tx.init(lo)
            losses = []
            for ex in micro:
                lo, opt, m = step(lo, opt, params, make(ex), None)
                losses.append(float(m["loss"]))
            out[name] = (lo, losses)
    np.testing.assert_allclose(out["packed"][1], out["padded"][1], rtol=TOL)
    for a, b in zip(jax.tree.leaves(out["packed"][0]), jax.tree.leaves(out["padded"][0])):
        assert _rel(a, b) < 1e-4  # Adam's m/√v after 3 updates: see tests/packed/test_step.py


@pytest.mark.parametrize("cfg", [GPT2, LLAMA], ids=["gpt2", "llama"])
def test_no_token_attends_across_segments(cfg):
    """Changing one example's tokens changes no other example's logits in the packed row."""
    module, params, _ = _setup(cfg)
    ex = _examples(cfg.vocab_size, [7, 9, 12])
    b = pack_examples(ex, ROW)
    assert b["input_ids"].shape[0] == 1  # all three in one row
    other = [dict(e) for e in ex]
    other[1] = {"input_ids": [(t % 90) + 3 for t in ex[1]["input_ids"][::-1]],
                "loss_mask": ex[1]["loss_mask"]}  # fmt: skip
    b2 = pack_examples(other, ROW)
    fwd = jax.jit(lambda batch: module.apply({"params": params}, batch["input_ids"],
                                             segment_ids=batch["segment_ids"],
                                             positions=batch["positions"])[0])  # fmt: skip
    with jax.default_matmul_precision("highest"):
        l1, l2 = np.asarray(fwd(b)), np.asarray(fwd(b2))
        alone = np.asarray(module.apply({"params": params}, np.array([ex[2]["input_ids"]]))[0])
    seg = b["segment_ids"][0]
    assert not np.allclose(l1[0, seg == 2], l2[0, seg == 2])  # the changed example changed
    np.testing.assert_array_equal(l1[0, seg == 1], l2[0, seg == 1])
    np.testing.assert_array_equal(l1[0, seg == 3], l2[0, seg == 3])
    # and the third example's logits are its logits alone (positions restart per example)
    assert _rel(l1[0, seg == 3], alone[0]) < TOL


def test_packed_batches_are_the_same_examples_per_step_and_resumable():
    ex = _examples(97, [5, 32, 17, 2, 11, 23, 9, 14, 30, 3, 8] * 3)
    padded = TrainBatches(ex, 8, seed=3, buckets=[ROW])
    packed = PackedRowBatches(ex, 8, seed=3, row_len=ROW)
    for step in range(10):  # beyond one epoch (5 steps)
        np.testing.assert_array_equal(packed.indices_at(step), padded.indices_at(step))
        b = packed.batch_at(step)
        assert b["attention_mask"].sum() == padded.batch_at(step)["attention_mask"].sum()
        assert b["input_ids"].size == packed.positions_at(step)
        assert b["input_ids"].shape[0] in packed.row_counts()
    fresh = PackedRowBatches(ex, 8, seed=3, row_len=ROW)  # a resumed run's batches
    np.testing.assert_array_equal(fresh.batch_at(7)["input_ids"], packed.batch_at(7)["input_ids"])
