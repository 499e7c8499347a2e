"""Mask-free attention, nn.scan over layers and remat policies change nothing numerically:
equal logits and LoRA gradients; remat lowers the compiled step's temp memory.

fp32 with ``jax.default_matmul_precision("highest")`` (exact fp32 matmuls on every backend)."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import lora_jax.lora as L
from lora_jax.models.config import ModelConfig
from lora_jax.models.layers import stack_layers, unstack_layers
from lora_jax.models.registry import build_model, lora_modules
from lora_jax.train.step import make_loss, make_train_step

GPT2 = ModelConfig(
    model_type="gpt2", vocab_size=61, hidden_size=16, num_layers=2, num_heads=2, num_kv_heads=2,
    head_dim=8, intermediate_size=64, max_position_embeddings=32, attention_bias=True,
    mlp_bias=True, tie_word_embeddings=True, activation="gelu_new",
)  # fmt: skip
LLAMA = ModelConfig(
    model_type="llama", vocab_size=61, hidden_size=16, num_layers=2, num_heads=4, num_kv_heads=2,
    head_dim=4, intermediate_size=24, max_position_embeddings=32,
)  # fmt: skip
PREFIX = {"gpt2": "h", "llama": "layers"}


def _rel(a, b) -> float:
    a, b = np.asarray(a), np.asarray(b)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


def _assert_trees_close(got, ref, tol: float = 1e-5) -> None:
    """Leafwise, to ``tol`` times the largest reference gradient (some leaves are ~0)."""
    assert jax.tree.structure(got) == jax.tree.structure(ref)
    scale = max(float(np.abs(np.asarray(x)).max()) for x in jax.tree.leaves(ref))
    assert scale > 1e-3
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(ref)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=0, atol=tol * scale)


@functools.cache
def setup(cfg: ModelConfig):
    module = build_model(cfg)
    rng = np.random.default_rng(0)
    ids = rng.integers(0, cfg.vocab_size, (3, 10)).astype(np.int32)
    params = jax.jit(module.init)(jax.random.key(0), jnp.asarray(ids))["params"]
    params = jax.tree.map(lambda p: p * 8.0 if p.ndim == 2 else p, params)  # non-trivial logits
    # gaussian: the values this test was sized with (its tolerance is not about the init)
    lcfg = L.LoraConfig(r=2, targets="all", init="gaussian")
    lora, _ = L.init(jax.random.key(1), params, lcfg, lora_modules(cfg))
    lora = jax.tree.map(lambda x: x + 0.3 if x.ndim == 2 else x, lora)  # B != 0
    lengths = np.array([6, 10, 8], np.int32)
    mask = (np.arange(10)[None] < lengths[:, None]).astype(np.int32)  # right padding
    loss_mask = mask.astype(np.float32)
    batch = {"input_ids": jnp.asarray(ids), "attention_mask": jnp.asarray(mask),
             "loss_mask": jnp.asarray(loss_mask)}  # fmt: skip
    return module, params, lora, batch


def _grads(module, params, lora, batch):
    loss = make_loss(module)
    f = lambda lo: loss({"params": params, "lora": lo}, batch, None)  # noqa: E731
    with jax.default_matmul_precision("highest"):
        return jax.jit(jax.value_and_grad(f, has_aux=True))(lora)


@pytest.mark.parametrize("cfg", [GPT2, LLAMA], ids=["gpt2", "llama"])
def test_mask_free_padding_equals_each_row_alone(cfg):
    """Right padding by lengths (no mask), and left padding by attention_mask (rows compacted):
    every real token's logits equal those of its row run alone, unpadded."""
    module, params, lora, batch = setup(cfg)
    v = {"params": params, "lora": lora}
    ids, lengths = np.asarray(batch["input_ids"]), np.asarray(batch["attention_mask"]).sum(1)
    with jax.default_matmul_precision("highest"):
        right, _ = jax.jit(lambda i, n: module.apply(v, i, seq_lengths=n))(ids, lengths)
        left_ids = np.stack([np.roll(r, 10 - n) for r, n in zip(ids, lengths)])
        left_mask = np.stack([np.roll(m, 10 - n) for m, n in zip(batch["attention_mask"], lengths)])
        left, _ = jax.jit(lambda i, m: module.apply(v, i, m))(left_ids, left_mask)
        alone = [jax.jit(module.apply)(v, ids[r : r + 1, :n])[0] for r, n in enumerate(lengths)]
    for row, n in enumerate(lengths):
        assert np.abs(np.asarray(alone[row])).max() > 1.0
        assert _rel(right[row, :n], alone[row][0]) < 1e-5
        assert _rel(left[row, 10 - n :], alone[row][0]) < 1e-5


@pytest.mark.parametrize("cfg", [GPT2, LLAMA], ids=["gpt2", "llama"])
def test_scan_equals_loop_logits_and_grads(cfg):
    module, params, lora, batch = setup(cfg)
    p = PREFIX[cfg.family]
    scanned = module.clone(scan_layers=True)
    sp, sl = stack_layers(params, p), stack_layers(lora, p)
    assert sp[p]["mlp"]["c_fc" if cfg.family == "gpt2" else "up_proj"]["kernel"].shape[0] == 2
    (l1, _), g1 = _grads(module, params, lora, batch)
    (l2, _), g2 = _grads(scanned, sp, sl, batch)
    assert abs(float(l1) - float(l2)) < 1e-6 * abs(float(l1))
    _assert_trees_close(unstack_layers(g2, p), g1)
    # the conversion round-trips and a partial LoRA tree is refused with the fix named
    for a, b in zip(jax.tree.leaves(unstack_layers(sp, p)), jax.tree.leaves(params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    partial = {k: v for k, v in lora.items() if k != f"{p}_0"}
    with pytest.raises(ValueError, match=f"{p}_i must be 0..L-1"):
        stack_layers(partial, p)


def test_remat_equals_no_remat():
    module, params, lora, batch = setup(LLAMA)
    (l1, _), g1 = _grads(module, params, lora, batch)
    for remat in ["block", "dots_saveable", "full"]:
        (l2, _), g2 = _grads(module.clone(remat=remat), params, lora, batch)
        assert abs(float(l1) - float(l2)) < 1e-6 * abs(float(l1))
        _assert_trees_close(g2, g1)


def test_remat_lowers_temp_memory_and_bad_policy_errors():
    """XLA's memory analysis of the compiled LoRA step, layers scanned (in a Python-unrolled
    loop XLA:CPU's scheduler hoists the recomputation and the saving disappears there)."""
    cfg = LLAMA.replace(num_layers=4, hidden_size=64, intermediate_size=256, num_heads=4,
                        num_kv_heads=4, head_dim=16, max_position_embeddings=256)  # fmt: skip
    module = build_model(cfg).clone(scan_layers=True)
    b, t = 4, 256
    batch = {"input_ids": jnp.zeros((b, t), jnp.int32), "attention_mask": jnp.ones((b, t), jnp.int32),
             "loss_mask": jnp.ones((b, t), jnp.float32)}  # fmt: skip
    params = jax.eval_shape(build_model(cfg).init, jax.random.key(0), batch["input_ids"])["params"]
    lora = jax.eval_shape(
        lambda p: L.init(jax.random.key(1), p, L.LoraConfig(r=4, targets="all"),
                         lora_modules(cfg))[0], params)  # fmt: skip
    stacked = jax.eval_shape(lambda p: stack_layers(p, "layers"), params)
    tx = L.make_optimizer(optax.adamw(1e-3), lora)
    opt = jax.eval_shape(tx.init, lora)

    def temp(remat):
        step = make_train_step(module.clone(remat=remat), tx, scan_prefix="layers")
        compiled = step.lower(lora, opt, stacked, batch, jax.random.key(0)).compile()
        return compiled.memory_analysis().temp_size_in_bytes

    none, full = temp("none"), temp("full")
    assert full < 0.5 * none, (none, full)
    with pytest.raises(ValueError, match="unknown remat policy 'some'"):
        module.clone(remat="some").init(jax.random.key(0), batch["input_ids"])


def test_decode_step_never_transposes_the_kv_cache():
    """The compiled one-token decode step holds no transpose/copy of a K/V-cache-sized array
    (the [B, S, kv, hd] layout had four per layer on XLA:CPU)."""
    import re

    from lora_jax.models.registry import init_cache

    module, params, _, _ = setup(LLAMA)
    b, s = 5, 333  # sizes that appear nowhere else in the model
    cache = init_cache(LLAMA, b, s)
    step = jax.jit(
        lambda p, t, c: module.apply({"params": p}, t, jnp.ones((b, 1), jnp.int32), cache=c),
        donate_argnums=(2,),
    )
    hlo = step.lower(params, jnp.zeros((b, 1), jnp.int32), cache).compile().as_text()
    kv, hd = LLAMA.num_kv_heads, LLAMA.head_dim
    shapes = "|".join(",".join(map(str, p)) for p in
                      [(b, kv, s, hd), (b, s, kv, hd), (b, kv, hd, s), (b, hd, kv, s)])  # fmt: skip
    moves = re.findall(rf"= f32\[({shapes})\]\{{[^}}]*\}} (transpose|copy)\(", hlo)
    assert "333" in hlo and not moves, moves
