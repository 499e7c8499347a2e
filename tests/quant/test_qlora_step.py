"""A QLoRA train step: the loss and LoRA gradients over a quantized frozen base equal the same
step over the explicitly dequantized base, and the compiled step holds the packed kernels, not a
float copy of them (XLA's memory analysis). fp32 on CPU, highest matmul precision."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from lora_jax.lora import LoraConfig
from lora_jax.lora import init as lora_init
from lora_jax.models.config import ModelConfig
from lora_jax.models.registry import build_model, lora_modules
from lora_jax.quant import frozen_bytes, is_quantized, quantize_params
from lora_jax.train.step import lm_loss, make_train_step

CFG = ModelConfig(model_type="llama", vocab_size=128, hidden_size=128, num_layers=2, num_heads=4,
                  num_kv_heads=2, head_dim=32, intermediate_size=256, max_position_embeddings=64)  # fmt: skip


def _nbytes(tree) -> int:
    return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree))


def _dequantized(params):
    return jax.tree.map(
        lambda x: x.dequantize(jnp.float32) if is_quantized(x) else x, params, is_leaf=is_quantized
    )


@pytest.fixture(scope="module")
def setup():
    module = build_model(CFG)
    ids = jax.random.randint(jax.random.key(3), (2, 24), 0, CFG.vocab_size)
    params = module.init(jax.random.key(0), ids)["params"]
    lora, _ = lora_init(
        jax.random.key(1), params, LoraConfig(r=4, targets="all"), lora_modules(CFG)
    )
    # B ≠ 0 so that the gradients of A (and the base's effect on them) are not trivially zero
    lora = jax.tree_util.tree_map_with_path(
        lambda p, x: 0.05 * jax.random.normal(jax.random.key(len(str(p))), x.shape)
        if p[-1].key == "b" else x, lora)  # fmt: skip
    batch = {"input_ids": ids, "attention_mask": jnp.ones_like(ids),
             "loss_mask": jnp.ones_like(ids).at[:, :8].set(0)}  # fmt: skip
    return module, params, lora, batch


def test_int8_kernel_is_the_transposed_row_quantization(setup):
    _, params, _, _ = setup
    w = params["layers_0"]["mlp"]["down_proj"]["kernel"]  # [in, out]
    qk = quantize_params(params, "int8", lora_modules(CFG))["layers_0"]["mlp"]["down_proj"][
        "kernel"
    ]
    got = np.asarray(qk.dequantize())
    assert qk.shape == w.shape and qk.nbytes == w.size + 4 * w.shape[1]  # int8 + fp32 per row
    step = np.abs(np.asarray(w)).max(axis=0) / 127  # one scale per output feature
    assert np.all(np.abs(got - np.asarray(w)) <= step / 2 + 1e-7)
    assert not np.array_equal(got, np.asarray(w))


def test_step_equals_the_step_on_the_dequantized_base(setup):
    module, params, lora, batch = setup
    qparams = quantize_params(params, "nf4", lora_modules(CFG))
    n_q = sum(is_quantized(x) for x in jax.tree.leaves(qparams, is_leaf=is_quantized))
    assert n_q == 7 * CFG.num_layers  # every projection; embeddings, norms, LM head stay float
    dense = _dequantized(qparams)
    assert not np.allclose(dense["layers_0"]["mlp"]["up_proj"]["kernel"],
                           params["layers_0"]["mlp"]["up_proj"]["kernel"], atol=1e-6)  # fmt: skip

    def loss_fn(lo, frozen):
        logits, _ = module.apply({"params": frozen, "lora": lo}, batch["input_ids"])
        return lm_loss(logits, batch)[0]

    with jax.default_matmul_precision("highest"):
        vg = jax.jit(jax.value_and_grad(loss_fn))  # the differentiated part of make_train_step
        (lq, gq), (ld, gd) = vg(lora, qparams), vg(lora, dense)
    np.testing.assert_allclose(lq, ld, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(gq), jax.tree.leaves(gd)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * float(jnp.abs(b).max()) + 1e-12)
    assert float(jnp.abs(gq["layers_0"]["self_attn"]["q_proj"]["q"]["a"]).max()) > 0


def test_compiled_step_holds_the_packed_kernels_only(setup):
    module, params, lora, batch = setup
    qparams = quantize_params(params, "nf4", lora_modules(CFG))
    dense = _dequantized(qparams)
    tx = optax.adamw(1e-3)
    opt = tx.init(lora)
    step = make_train_step(module, tx, jit=True)
    rng = jax.random.key(0)

    def memory(frozen):
        return step.lower(lora, opt, frozen, batch, rng).compile().memory_analysis()

    mq, md = memory(qparams), memory(dense)
    kernels = [x for x in jax.tree.leaves(qparams, is_leaf=is_quantized) if is_quantized(x)]
    # NF4: n/2 bytes of codes + one 8-bit absmax per 64 + one fp32 scale per 256 absmax + offset
    # (QLoRA §3: 4 + 8/64 + 32/(64·256) bits per weight)
    packed = sum(k.size // 2 + k.size // 64 + 4 * math.ceil(k.size / 64 / 256) + 4 for k in kernels)
    unquantized = _nbytes(params) - sum(4 * k.size for k in kernels)
    assert frozen_bytes(qparams)["quantized_bytes"] == packed
    # the same step's arguments differ by exactly the frozen base's bytes: packed vs float
    diff = md.argument_size_in_bytes - mq.argument_size_in_bytes
    assert diff == _nbytes(dense) - (packed + unquantized)
    # no float copy of the base in the step's temporaries: at most one layer's float kernels
    one_layer = sum(4 * k.size for k in kernels) / CFG.num_layers
    assert mq.temp_size_in_bytes - md.temp_size_in_bytes < one_layer, (
        mq.temp_size_in_bytes, md.temp_size_in_bytes, one_layer)  # fmt: skip


@pytest.mark.parametrize("extra", [{"variant": "dora"}, {"init": "pissa"}, {"init": "olora"}])
def test_variants_over_a_quantized_base_equal_the_dequantized_base(setup, extra):
    """DoRA / PiSSA / OLoRA on an NF4 base (init from the dequantized kernels, the base kept
    quantized: PiSSA's residual is the offset branch, not a re-quantized W): the adapters, the
    loss and the gradients equal those over the explicitly dequantized base."""
    module, params, _, batch = setup
    # both trees in one key order (tree.map sorts dict keys; the targets, and so the rng keys
    # of a random A, follow the params' order)
    qparams = quantize_params(jax.tree.map(lambda x: x, params), "nf4", lora_modules(CFG))
    dense = _dequantized(qparams)
    cfg = LoraConfig(r=4, targets="all", **extra)
    lq, _ = lora_init(jax.random.key(1), qparams, cfg, lora_modules(CFG))
    ld, _ = lora_init(jax.random.key(1), dense, cfg, lora_modules(CFG))
    for a, b in zip(jax.tree.leaves(lq), jax.tree.leaves(ld)):
        np.testing.assert_array_equal(a, b)
    lora = jax.tree_util.tree_map_with_path(
        lambda p, x: x + 0.05 * jax.random.normal(jax.random.key(len(str(p))), x.shape)
        if p[-1].key == "b" else x, lq)  # fmt: skip

    def loss_fn(lo, frozen):
        logits, _ = module.apply({"params": frozen, "lora": lo}, batch["input_ids"])
        return lm_loss(logits, batch)[0]

    with jax.default_matmul_precision("highest"):
        vg = jax.jit(jax.value_and_grad(loss_fn))
        (lossq, gq), (lossd, gd) = vg(lora, qparams), vg(lora, dense)
    np.testing.assert_allclose(lossq, lossd, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(gq), jax.tree.leaves(gd)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * float(jnp.abs(b).max()) + 1e-12)
