"""LoRA core behaviour on a small GPT-2-shaped model (tests/lora/toy.py)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import lora_jax.lora as L
from lora_jax.train.step import make_train_step
from tests.lora import toy

RNG = jax.random.PRNGKey(0)


def _batch(vocab=64, B=4, T=16, seed=1):
    ids = jax.random.randint(jax.random.PRNGKey(seed), (B, T), 0, vocab)
    mask = jnp.ones((B, T), jnp.int32).at[0, -5:].set(0)  # one right-padded row
    loss_mask = mask.astype(jnp.float32).at[:, :4].set(0.0)  # first tokens are "source"
    return {"input_ids": ids, "attention_mask": mask, "loss_mask": loss_mask}


def _randomize_b(lora, seed=3):
    leaves, treedef = jax.tree_util.tree_flatten_with_path(lora)
    keys = jax.random.split(jax.random.PRNGKey(seed), len(leaves))
    out = []
    for (path, x), k in zip(leaves, keys):
        name = path[-1].key
        out.append(jax.random.normal(k, x.shape) * 0.1 if name == "b" else x)
    return jax.tree_util.tree_unflatten(treedef, out)


def _logits(model, variables, batch):
    return model.apply(variables, batch["input_ids"], attention_mask=batch["attention_mask"])[0]


@pytest.mark.parametrize("targets", ["qv", "all", ["o", "up"]])
def test_zero_b_gives_the_base_model(targets):
    model, params = toy.make()
    lora, _ = L.init(RNG, params, L.LoraConfig(r=4, targets=targets), toy.MODULES)
    b = _batch()
    base = _logits(model, {"params": params}, b)
    adapted = _logits(model, {"params": params, "lora": lora}, b)
    np.testing.assert_array_equal(np.asarray(base), np.asarray(adapted))
    # and a non-zero B changes the output (the branch is wired in)
    changed = _logits(model, {"params": params, "lora": _randomize_b(lora)}, b)
    assert not np.allclose(base, changed, atol=1e-4)


@pytest.mark.parametrize("targets", ["qv", "all", "k"])
def test_merged_equals_unmerged_and_unmerge_inverts(targets):
    model, params = toy.make()
    lora, _ = L.init(RNG, params, L.LoraConfig(r=4, alpha=16, targets=targets), toy.MODULES)
    lora = _randomize_b(lora)
    b = _batch()
    unmerged = _logits(model, {"params": params, "lora": lora}, b)
    merged_params = L.merge(params, lora, toy.MODULES)
    merged = _logits(model, {"params": merged_params}, b)
    # fp32 at "highest" matmul precision (tests/conftest.py): merged and unmerged round
    # differently, by a few ulps of the largest logit after two layers.
    toy.assert_close(merged, unmerged, rel=1e-5)
    back = L.unmerge(merged_params, lora, toy.MODULES)
    for x, y in zip(jax.tree.leaves(back), jax.tree.leaves(params)):
        toy.assert_close(x, y, rel=1e-6)  # W + ΔW - ΔW: one rounding of each sum
    # merge must not mutate its input
    np.testing.assert_array_equal(
        np.asarray(params["h_0"]["attn"]["c_attn"]["kernel"]),
        np.asarray(toy.make()[1]["h_0"]["attn"]["c_attn"]["kernel"]),
    )


def test_merge_formula_by_hand():
    """W' = W + (α/r)·A·B, placed in the q and v column blocks of the fused kernel only."""
    _, params = toy.make()
    cfg = L.LoraConfig(r=2, alpha=6, targets="qv")
    lora = _randomize_b(L.init(RNG, params, cfg, toy.MODULES)[0])
    merged = L.merge(params, lora, toy.MODULES)
    W = np.asarray(params["h_1"]["attn"]["c_attn"]["kernel"])
    Wm = np.asarray(merged["h_1"]["attn"]["c_attn"]["kernel"])
    ad = lora["h_1"]["attn"]["c_attn"]
    d = W.shape[0]
    for i, name in enumerate("qkv"):
        block = slice(i * d, (i + 1) * d)
        expect = W[:, block]
        if name in ad:
            expect = expect + 3.0 * np.asarray(ad[name]["a"]) @ np.asarray(ad[name]["b"])
        toy.assert_close(Wm[:, block], expect, rel=1e-6)


def _train(model, params, lora, steps=3, lr=1e-2, **step_kw):
    tx = L.make_optimizer(optax.adamw(lr), lora)
    opt_state = tx.init(lora)
    step = make_train_step(model, tx, **step_kw)
    losses = []
    for i in range(steps):
        lora, opt_state, m = step(lora, opt_state, params, _batch(), jax.random.PRNGKey(i))
        losses.append(float(m["loss"]))
    return lora, opt_state, losses


def test_gradients_and_optimizer_state_only_for_lora_leaves():
    model, params = toy.make()
    lora, targets = L.init(RNG, params, L.LoraConfig(r=4, targets="all"), toy.MODULES)
    tx = L.make_optimizer(optax.adamw(1e-3), lora)
    opt_state = tx.init(lora)
    # Adam keeps mu and nu for every A and B entry, nothing for scale or the frozen base.
    arrays = [x for x in jax.tree.leaves(opt_state) if hasattr(x, "shape") and x.ndim > 0]
    trainable = L.count_trainable(lora)
    assert sum(x.size for x in arrays) == 2 * trainable
    assert trainable == sum(t.num_params for t in targets)

    b = _batch()

    def loss(lora_):
        return _logits(model, {"params": params, "lora": lora_}, b).sum()

    grads = jax.grad(loss)(lora)
    assert jax.tree.structure(grads) == jax.tree.structure(lora)
    # B = 0 at init, so dL/dA = 0 and dL/dB != 0 (the paper's init makes B learn first)
    for _, _, g in L.iter_adapters(grads):
        assert float(jnp.abs(g["b"]).max()) > 0
        assert float(g["scale"]) == 0.0  # scale is stop-gradient data

    scales_before = [float(ad["scale"]) for _, _, ad in L.iter_adapters(lora)]
    lora2, _, losses = _train(model, params, lora, steps=5)  # donates lora
    assert losses[-1] < losses[0]
    for _, _, ad in L.iter_adapters(lora2):
        assert float(jnp.abs(ad["b"]).max()) > 0  # trained
    scales_after = [float(ad["scale"]) for _, _, ad in L.iter_adapters(lora2)]
    assert scales_before == scales_after  # frozen leaf: zero update (and AdamW decay skipped)


def test_qv_on_fused_qkv_leaves_the_k_block_unchanged_after_training():
    model, params = toy.make()
    lora, _ = L.init(RNG, params, L.LoraConfig(r=4, targets="qv"), toy.MODULES)
    lora, _, _ = _train(model, params, lora, steps=4)
    layer = L.LoraDense(3 * 32, toy.MODULES["attn.c_attn"])
    x = jax.random.normal(jax.random.PRNGKey(9), (2, 5, 32))
    for i in range(2):
        p = params[f"h_{i}"]["attn"]["c_attn"]
        base = layer.apply({"params": p}, x)
        adapted = layer.apply({"params": p, "lora": lora[f"h_{i}"]["attn"]["c_attn"]}, x)
        bq, bk, bv = np.split(np.asarray(base), 3, axis=-1)
        aq, ak, av = np.split(np.asarray(adapted), 3, axis=-1)
        np.testing.assert_array_equal(ak, bk)
        assert not np.allclose(aq, bq, atol=1e-5)
        assert not np.allclose(av, bv, atol=1e-5)
    assert set(lora["h_0"]["attn"]["c_attn"]) == {"q", "v"}


def test_rslora_and_standard_scaling():
    _, params = toy.make()
    for scaling, expect in [("standard", 16 / 4), ("rslora", 16 / math.sqrt(4))]:
        lora, targets = L.init(
            RNG, params, L.LoraConfig(r=4, alpha=16, scaling=scaling), toy.MODULES
        )
        assert all(t.scale == pytest.approx(expect) for t in targets)
        assert all(
            float(ad["scale"]) == pytest.approx(expect) for _, _, ad in L.iter_adapters(lora)
        )
    # the layer applies exactly x·W + b + s·(x·A)·B
    lora = _randomize_b(lora)
    p = params["h_0"]["attn"]["c_proj"]
    ad = (
        lora["h_0"]["attn"]["c_proj"]["o"] if "o" in lora["h_0"]["attn"].get("c_proj", {}) else None
    )
    assert ad is None  # default targets = qv
    lora_o, _ = L.init(
        RNG, params, L.LoraConfig(r=4, alpha=16, scaling="rslora", targets="o"), toy.MODULES
    )
    lora_o = _randomize_b(lora_o)
    ad = lora_o["h_0"]["attn"]["c_proj"]["o"]
    x = np.random.default_rng(0).normal(size=(3, 32)).astype(np.float32)
    y = L.LoraDense(32, ("o",)).apply({"params": p, "lora": {"o": ad}}, x)
    expect = (
        x @ np.asarray(p["kernel"])
        + np.asarray(p["bias"])
        + 8.0 * (x @ np.asarray(ad["a"])) @ np.asarray(ad["b"])
    )
    toy.assert_close(y, expect, rel=1e-6)


@pytest.mark.parametrize("r", [2, 4, 16])
def test_alpha_is_a_constant_8_not_tied_to_r(r):
    # PEFT's default lora_alpha=8; the paper keeps alpha fixed as r varies ([P §4.1]).
    _, params = toy.make()
    _, targets = L.init(RNG, params, L.LoraConfig(r=r), toy.MODULES)
    assert all(t.alpha == 8 and t.scale == pytest.approx(8 / r) for t in targets)


def test_alpha_null_is_rejected_with_the_fix():
    with pytest.raises(ValueError, match=r"no longer means alpha = r.*lora.alpha=<r>"):
        L.LoraConfig(alpha=None)


def test_counts_closed_form_and_report():
    _, params = toy.make(d=32, layers=2)
    cfg = L.LoraConfig(r=4, targets="all")
    lora, targets = L.init(RNG, params, cfg, toy.MODULES)
    d, r, L_ = 32, 4, 2
    # q,k,v,o: (d + d)·r each; up: (d + 4d)·r; down: (4d + d)·r  — per layer
    expect = L_ * (4 * (d + d) * r + (d + 4 * d) * r + (4 * d + d) * r)
    assert L.count_trainable(lora) == expect
    rep = L.param_report(targets, params)
    assert rep.trainable == expect
    assert rep.base == sum(x.size for x in jax.tree.leaves(params))
    assert {row.name: row.trainable for row in rep.rows} == {
        "q": 2 * 64 * 4,
        "k": 2 * 64 * 4,
        "v": 2 * 64 * 4,
        "o": 2 * 64 * 4,
        "up": 2 * 160 * 4,
        "down": 2 * 160 * 4,
    }
    text = str(rep)
    assert f"trainable params: {expect:,} ||" in text and "down" in text  # 4,608


def test_rank_pattern_alpha_pattern_and_layers():
    _, params = toy.make(layers=3)
    cfg = L.LoraConfig(
        r=4,
        alpha=8,
        targets="attn",
        layers=[0, 2],
        rank_pattern={r"h\.2\.attn\.c_proj": 2},
        alpha_pattern={"q": 32},
    )
    _, targets = L.init(RNG, params, cfg, toy.MODULES)
    assert {t.layer for t in targets} == {0, 2}
    by_id = {t.id: t for t in targets}
    assert by_id["h.2.attn.c_proj.o"].r == 2 and by_id["h.2.attn.c_proj.o"].scale == 8 / 2
    assert by_id["h.0.attn.c_proj.o"].r == 4
    assert by_id["h.0.attn.c_attn.q"].alpha == 32 and by_id["h.0.attn.c_attn.q"].scale == 8.0
    assert by_id["h.0.attn.c_attn.k"].alpha == 8


def _ids(**kw):
    _, params = toy.make(layers=3)
    return sorted(t.id for t in L.resolve(L.LoraConfig(r=2, **kw), params, toy.MODULES))


def test_regex_string_targets_fullmatch():
    assert _ids(targets=r"h\.1\.attn\.c_attn") == [
        "h.1.attn.c_attn.k",
        "h.1.attn.c_attn.q",
        "h.1.attn.c_attn.v",
    ]
    assert _ids(targets=r".*c_attn\.v") == [f"h.{i}.attn.c_attn.v" for i in range(3)]


@pytest.mark.parametrize(
    "kw, expect",
    [
        # PEFT list rule: exact or "."-suffix; a fused module means all its blocks.
        ({"targets": ["c_attn"]}, {f"h.{i}.attn.c_attn.{b}" for i in range(3) for b in "qkv"}),
        ({"targets": ["mlp.c_proj"]}, {f"h.{i}.mlp.c_proj.down" for i in range(3)}),
        ({"targets": ["c_proj"]}, {f"h.{i}.{m}" for i in range(3) for m in ("attn.c_proj.o", "mlp.c_proj.down")}),
        ({"targets": ["h.1.attn.c_attn"]}, {f"h.1.attn.c_attn.{b}" for b in "qkv"}),
        ({"targets": ["c_attn.v", "o"]}, {f"h.{i}.{m}" for i in range(3) for m in ("attn.c_attn.v", "attn.c_proj.o")}),
        ({"targets": "attn", "exclude_modules": ["k", "c_proj"]}, {f"h.{i}.attn.c_attn.{b}" for i in range(3) for b in "qv"}),
        ({"targets": ["c_attn"], "exclude_modules": r"h\.0\..*"}, {f"h.{i}.attn.c_attn.{b}" for i in (1, 2) for b in "qkv"}),
        ({"targets": "qv", "layers": 1}, {"h.1.attn.c_attn.q", "h.1.attn.c_attn.v"}),
        ({"targets": ["c_fc"], "layers": [0, 2]}, {"h.0.mlp.c_fc.up", "h.2.mlp.c_fc.up"}),
    ],
)  # fmt: skip
def test_peft_style_lists_exclude_and_layers(kw, expect):
    assert set(_ids(**kw)) == expect


def test_init_distributions():
    _, params = toy.make(d=256, layers=1)
    lora, _ = L.init(RNG, params, L.LoraConfig(r=8, init="gaussian", targets="up"), toy.MODULES)
    a = np.asarray(lora["h_0"]["mlp"]["c_fc"]["up"]["a"])
    assert a.shape == (256, 8) and abs(a.std() - 1 / 8) < 0.01
    lora, _ = L.init(RNG, params, L.LoraConfig(r=8, init="kaiming", targets="up"), toy.MODULES)
    a = np.asarray(lora["h_0"]["mlp"]["c_fc"]["up"]["a"])
    bound = 1 / math.sqrt(256)
    assert a.max() <= bound and a.min() >= -bound and a.max() > 0.9 * bound
    assert np.all(np.asarray(lora["h_0"]["mlp"]["c_fc"]["up"]["b"]) == 0)


def test_bf16_base_keeps_fp32_adapters_and_optimizer_state():
    model, params = toy.make(param_dtype=jnp.bfloat16)
    assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(params))
    lora, _ = L.init(RNG, params, L.LoraConfig(r=4), toy.MODULES)
    lora, opt_state, losses = _train(model, params, lora, steps=2)
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(lora))
    assert all(
        x.dtype == jnp.float32
        for x in jax.tree.leaves(opt_state)
        if hasattr(x, "dtype") and x.ndim > 0
    )
    assert np.isfinite(losses).all()


def test_lora_dropout_only_in_training_mode():
    model, params = toy.make(lora_dropout=0.5)
    lora = _randomize_b(L.init(RNG, params, L.LoraConfig(r=4), toy.MODULES)[0])
    b = _batch()
    v = {"params": params, "lora": lora}
    det = model.apply(v, b["input_ids"], attention_mask=b["attention_mask"])[0]
    det2 = model.apply(v, b["input_ids"], attention_mask=b["attention_mask"])[0]
    np.testing.assert_array_equal(np.asarray(det), np.asarray(det2))
    drop = model.apply(
        v,
        b["input_ids"],
        attention_mask=b["attention_mask"],
        deterministic=False,
        rngs={"dropout": jax.random.PRNGKey(1)},
    )[0]
    assert not np.allclose(det, drop, atol=1e-5)
    # dropout acts on the LoRA path only: with B = 0 the output is the base model's, dropout or not
    lora0 = L.init(RNG, params, L.LoraConfig(r=4), toy.MODULES)[0]
    base = model.apply({"params": params}, b["input_ids"], attention_mask=b["attention_mask"])[0]
    drop0 = model.apply(
        {"params": params, "lora": lora0},
        b["input_ids"],
        attention_mask=b["attention_mask"],
        deterministic=False,
        rngs={"dropout": jax.random.PRNGKey(1)},
    )[0]
    np.testing.assert_array_equal(np.asarray(base), np.asarray(drop0))  # + exact zeros
