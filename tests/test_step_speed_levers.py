"""The LoRA branch's hand-written backward and the chunked cross-entropy equal plain autodiff /
the plain loss; the chunked loss lowers XLA's temp memory on a 128k-vocabulary toy.

fp32 with ``jax.default_matmul_precision("highest")`` (exact fp32 matmuls on every backend)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import lora_jax.lora as L
from lora_jax.lora.layer import lora_delta
from lora_jax.models.config import ModelConfig
from lora_jax.models.registry import build_model
from lora_jax.train.step import lm_loss, lm_loss_chunked, make_loss, make_train_step

LLAMA = ModelConfig(
    model_type="llama", vocab_size=97, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2,
    head_dim=8, intermediate_size=48, max_position_embeddings=64, tie_word_embeddings=False,
)  # fmt: skip
MODULES = {"self_attn.q_proj": ("q",), "self_attn.k_proj": ("k",), "self_attn.v_proj": ("v",),
           "self_attn.o_proj": ("o",), "mlp.gate_proj": ("gate",), "mlp.up_proj": ("up",),
           "mlp.down_proj": ("down",)}  # fmt: skip


def _batch(vocab: int, b: int = 3, t: int = 12, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, vocab, (b, t)).astype(np.int32)
    mask = np.ones((b, t), np.int32)
    mask[0, -4:] = 0  # right padding, as tasks/batching.py makes
    loss = mask.astype(np.float32)
    loss[:, :3] = 0.0
    return {"input_ids": ids, "attention_mask": mask, "loss_mask": loss}


def _rel(a, b) -> float:
    a, b = np.asarray(a), np.asarray(b)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


def test_lora_delta_vjp_equals_autodiff():
    ks = jax.random.split(jax.random.key(0), 4)
    x = jax.random.normal(ks[0], (2, 5, 16))
    a = jax.random.normal(ks[1], (16, 4))
    b = jax.random.normal(ks[2], (4, 24))
    g = jax.random.normal(ks[3], (2, 5, 24))
    s = jnp.float32(1.7)
    with jax.default_matmul_precision("highest"):
        y, vjp = jax.vjp(lambda x, a, b: lora_delta(x, a, b, s), x, a, b)
        y_ref, vjp_ref = jax.vjp(lambda x, a, b: jnp.dot(jnp.dot(x, a), b) * s, x, a, b)
        grads, grads_ref = vjp(g), vjp_ref(g)
    assert _rel(y, y_ref) < 1e-6
    for got, ref in zip(grads, grads_ref):
        assert np.abs(np.asarray(ref)).max() > 1.0
        assert _rel(got, ref) < 1e-5


def _setup(cfg=LLAMA, targets="all", **model_kw):
    module = build_model(cfg)
    if model_kw:
        module = module.clone(**model_kw)
    batch = _batch(cfg.vocab_size)
    params = jax.jit(module.init)(jax.random.key(0), batch["input_ids"])["params"]
    lora, _ = L.init(jax.random.key(1), params, L.LoraConfig(r=4, targets=targets), MODULES)
    lora = jax.tree.map(lambda x: x + 0.05 if x.ndim == 2 else x, lora)  # B != 0
    return module, params, lora, batch


def test_model_lora_grads_equal_autodiff_with_dropout(monkeypatch):
    """The whole model's LoRA gradient (dropout on) with the custom VJP equals the gradient
    plain autodiff gives when the branch is written as ``s·(x·A)·B``."""
    import lora_jax.lora.layer as layer

    module, params, lora, batch = _setup()
    module = module.clone(lora_dropout=0.3)
    loss = make_loss(module, label_smoothing=0.1)
    rng = jax.random.key(5)

    def grads():
        f = lambda lo: loss({"params": params, "lora": lo}, batch, rng)[0]  # noqa: E731
        with jax.default_matmul_precision("highest"):
            return jax.jit(jax.grad(f))(lora)

    got = grads()
    monkeypatch.setattr(layer, "lora_delta", lambda x, a, b, s: jnp.dot(jnp.dot(x, a), b) * s)
    ref = grads()
    for g, r in zip(jax.tree.leaves(got), jax.tree.leaves(ref)):
        if np.abs(np.asarray(r)).max() > 0:
            assert _rel(g, r) < 1e-4


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_chunked_loss_equals_plain_loss_and_grads(smoothing):
    module, params, lora, batch = _setup(targets="qv")
    plain = make_loss(module, smoothing)
    chunked = make_loss(module, smoothing, loss_chunk=5)  # 33 targets: uneven last chunk

    def value_grad(fn):
        f = lambda lo: fn({"params": params, "lora": lo}, batch, None)  # noqa: E731
        with jax.default_matmul_precision("highest"):
            return jax.jit(jax.value_and_grad(f, has_aux=True))(lora)

    (l1, a1), g1 = value_grad(plain)
    (l2, a2), g2 = value_grad(chunked)
    assert abs(float(l1) - float(l2)) < 1e-5 * abs(float(l1))
    assert abs(float(a1["nll"]) - float(a2["nll"])) < 1e-5 * abs(float(a1["nll"]))
    assert float(a1["tokens"]) == float(a2["tokens"]) == batch["loss_mask"][:, 1:].sum()
    for x, y in zip(jax.tree.leaves(g2), jax.tree.leaves(g1)):
        if np.abs(np.asarray(y)).max() > 0:
            assert _rel(x, y) < 1e-4


def test_lm_loss_chunked_by_hand():
    """Against lm_loss on logits computed directly from the same hidden states and head."""
    rng = np.random.default_rng(3)
    hidden = jnp.asarray(rng.normal(size=(2, 7, 8)), jnp.float32)
    head = jnp.asarray(rng.normal(size=(8, 11)), jnp.float32)
    batch = _batch(11, b=2, t=7)
    with jax.default_matmul_precision("highest"):
        ref, _ = lm_loss(hidden @ head, batch, 0.2)
        got, _ = lm_loss_chunked(hidden, head, batch, 0.2, chunk=4)
    assert abs(float(got) - float(ref)) < 1e-5 * abs(float(ref))


def test_chunked_loss_lowers_temp_memory_on_a_128k_vocabulary():
    cfg = LLAMA.replace(vocab_size=128256, hidden_size=16, num_heads=2, num_kv_heads=1,
                        intermediate_size=16, num_layers=1)  # fmt: skip
    module = build_model(cfg)
    batch = {k: jnp.asarray(v) for k, v in _batch(cfg.vocab_size, b=2, t=64).items()}
    params = jax.eval_shape(module.init, jax.random.key(0), batch["input_ids"])["params"]
    lora = jax.eval_shape(
        lambda p: L.init(jax.random.key(1), p, L.LoraConfig(r=4, targets="qv"), MODULES)[0],
        params,
    )
    tx = L.make_optimizer(optax.adamw(1e-3), lora)
    opt = jax.eval_shape(tx.init, lora)

    def temp(chunk):
        step = make_train_step(module, tx, loss_chunk=chunk)
        compiled = step.lower(lora, opt, params, batch, jax.random.key(0)).compile()
        return compiled.memory_analysis().temp_size_in_bytes

    plain, chunked = temp(None), temp(16)
    logits_bytes = 2 * 63 * cfg.vocab_size * 4  # [B, T-1, V] fp32
    assert plain > logits_bytes  # the plain loss holds full logits
    assert chunked < plain - logits_bytes  # the chunked one never holds them all
