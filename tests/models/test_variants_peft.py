"""DoRA, PiSSA (exact and ``pissa_niter_K``) and OLoRA equal PEFT's definitions.

For each variant on a tiny Llama (q, v and down_proj adapted): lora-jax's init from the same
weights gives PEFT's A, B, magnitude and residual base (PiSSA's singular vectors up to their
sign, which the SVD leaves free and which changes nothing below: every quantity is invariant
under flipping a column of A with the matching row of B); with a non-zero B the logits equal
PEFT's; 20 AdamW steps on the same batches give PEFT's losses; the PEFT export loads with
``PeftModel.from_pretrained`` on the untouched base and gives lora-jax's logits; and PEFT's own
trained adapter (DoRA as saved, PiSSA/OLoRA converted by PEFT for the untouched base) imports to
the trained PEFT model's logits.

Precision: fp32 both sides; JAX matmuls at "highest" (exact fp32 dots on CPU), torch CPU fp32.
Inits compare to 1e-4 of the weights' scale (SVD/QR in two LAPACK builds; a singular vector
moves by rounding / spectral gap); logits to 2e-5 ×
max|logit|; losses to 1e-4 absolute over 20 steps (Adam carries summation-order differences).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest_gguf import smollm2_gguf  # noqa: F401

from lora_jax.export import load_peft, save_peft
from lora_jax.export.peft import module_name
from lora_jax.lora import LoraConfig, init, iter_adapters
from lora_jax.lora.params import dora_norm, factors
from lora_jax.models.pretrained import load_model
from lora_jax.models.registry import lora_modules
from lora_jax.train.optimizer import build_optimizer
from lora_jax.train.step import make_train_step

TARGETS = ["q_proj", "v_proj", "down_proj"]
OPTIM = {"name": "adamw", "lr": 1e-2, "b1": 0.9, "b2": 0.999, "eps": 1e-6, "weight_decay": 0.01,
         "schedule": "constant", "warmup_steps": 0, "grad_clip": None, "grad_accum": 1,
         "label_smoothing": 0.0}  # fmt: skip
# (lora-jax config, PEFT LoraConfig kwargs)
VARIANTS = {
    "dora": ({"variant": "dora"}, {"use_dora": True}),
    "pissa": ({"init": "pissa"}, {"init_lora_weights": "pissa"}),
    "olora": ({"init": "olora"}, {"init_lora_weights": "olora"}),
    "dora+pissa": (
        {"variant": "dora", "init": "pissa"},
        {"use_dora": True, "init_lora_weights": "pissa"},
    ),  # fmt: skip
}


def test_dora_norm_equals_the_formed_matrix_norm():
    rng = np.random.default_rng(0)
    w, a, b = rng.normal(size=(12, 7)), rng.normal(size=(12, 3)), rng.normal(size=(3, 7))
    got = dora_norm(jnp.asarray(w), jnp.asarray(a), jnp.asarray(b), 0.5)
    np.testing.assert_allclose(np.asarray(got), np.linalg.norm(w + 0.5 * a @ b, axis=0),
                               rtol=1e-5)  # fmt: skip


def test_pissa_niter_recovers_the_top_subspace_and_keeps_the_model():
    """The randomized SVD (our draw, not torch's) finds the exact top-r factors of a matrix with a
    decaying spectrum, and ΔW = s(AB - A0B0) = 0 at init as for every data-driven init."""
    rng = np.random.default_rng(1)
    u, _ = np.linalg.qr(rng.normal(size=(32, 32)))
    v, _ = np.linalg.qr(rng.normal(size=(24, 24)))
    w = (u[:, :24] * 0.5 ** np.arange(24)) @ v.T  # [in=32, out=24]
    params = {"layers_0": {"self_attn": {"q_proj": {"kernel": jnp.asarray(w, jnp.float32)}}}}
    modules = {"self_attn.q_proj": ("q",)}
    exact, _ = init(jax.random.key(0), params, LoraConfig(r=4, targets="q", init="pissa"), modules)
    fast, _ = init(jax.random.key(0), params,
                   LoraConfig(r=4, targets="q", init="pissa_niter_8"), modules)  # fmt: skip
    e, f = (
        exact["layers_0"]["self_attn"]["q_proj"]["q"],
        fast["layers_0"]["self_attn"]["q_proj"]["q"],
    )
    np.testing.assert_allclose(np.asarray(f["a"] @ f["b"]), np.asarray(e["a"] @ e["b"]), atol=1e-5)
    for ad in (e, f):
        a, b = factors(ad)
        # [a, a0]·[b; -b0] = 0 at init up to fp32 rounding of the rank-2r sum
        assert float(jnp.abs(a @ b).max()) <= 1e-6 * np.abs(w).max()


def _peft_model(path, peft_kwargs, seed=0):
    import torch
    from peft import LoraConfig as PeftConfig
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    hf = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32,
                                              attn_implementation="eager")  # fmt: skip
    cfg = PeftConfig(r=4, lora_alpha=8, target_modules=TARGETS, lora_dropout=0.0, **peft_kwargs)
    return get_peft_model(hf, cfg)


def _peft_modules(peft_model, lora, cfg):
    """(our adapter, its transformers module name, the PEFT LoRA module) triples."""
    named = dict(peft_model.base_model.model.named_modules())
    for path, _name, ad in iter_adapters(lora):
        yield ad, module_name(path, cfg), named[module_name(path, cfg)]


def _set_peft(peft_model, lora, cfg):
    """Write our A, B (and m) into PEFT's modules (the trainable state; bases stay PEFT's)."""
    import torch

    with torch.no_grad():
        for ad, _, mod in _peft_modules(peft_model, lora, cfg):
            mod.lora_A["default"].weight.copy_(torch.from_numpy(np.asarray(ad["a"]).T.copy()))
            mod.lora_B["default"].weight.copy_(torch.from_numpy(np.asarray(ad["b"]).T.copy()))
            if "m" in ad:
                mod.lora_magnitude_vector["default"].weight.copy_(
                    torch.from_numpy(np.asarray(ad["m"]).copy())
                )


def _logits(lm, lora, ids):
    with jax.default_matmul_precision("highest"):
        out = lm.module.apply({"params": lm.params, "lora": lora}, jnp.asarray(ids))
        return np.asarray(out[0])


def _batches(vocab: int) -> list[dict]:
    data = np.random.default_rng(0).integers(0, vocab, (2, 4, 16)).astype(np.int32)
    return [{"input_ids": data[i % 2], "attention_mask": np.ones_like(data[0]),
             "loss_mask": np.ones(data[0].shape, np.float32)} for i in range(20)]  # fmt: skip


def _our_losses(lm, lora, batches, lr=OPTIM["lr"], loraplus_lr_ratio=None):
    optim = {**OPTIM, "lr": lr, "loraplus_lr_ratio": loraplus_lr_ratio}
    tx, _ = build_optimizer(optim, lora, total_steps=len(batches))
    step = make_train_step(lm.module, tx)
    opt_state, losses = tx.init(lora), []
    with jax.default_matmul_precision("highest"):
        for batch in batches:
            lora, opt_state, m = step(lora, opt_state, lm.params, batch, None)
            losses.append(float(m["loss"]))
    return losses, lora


def _peft_losses(peft_model, opt, batches) -> list[float]:
    """PEFT's training losses over ``batches`` (labels = inputs), one ``opt`` step each."""
    import torch

    peft_model.train()
    losses = []
    for batch in batches:
        t = torch.tensor(batch["input_ids"], dtype=torch.long)
        loss = peft_model(input_ids=t, labels=t).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


@pytest.mark.torch
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_variant_equals_peft(variant, make_tiny_hf_model, tmp_path):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    ours_cfg, peft_kwargs = VARIANTS[variant]
    path = make_tiny_hf_model("llama_gqa")
    lm = load_model(str(path))
    modules = lora_modules(lm.config)
    lcfg = LoraConfig(r=4, alpha=8, targets=["q", "v", "down"], **ours_cfg)
    lora, _ = init(jax.random.key(0), lm.params, lcfg, modules)
    lora = jax.tree.map(np.asarray, lora)
    peft_model = _peft_model(path, peft_kwargs)
    converts = "init_lora_weights" in peft_kwargs and "use_dora" not in peft_kwargs
    if converts:  # PEFT's recipe for converting a PiSSA/OLoRA adapter later: save the init first
        peft_model.peft_config["default"].init_lora_weights = True
        peft_model.save_pretrained(tmp_path / "peft_init")
    base = dict(AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).named_modules())

    # 1. the init: A, B, m and the residual base as PEFT makes them
    for ad, name, mod in _peft_modules(peft_model, lora, lm.config):
        pa = mod.lora_A["default"].weight.detach().numpy().T  # [in, r]
        pb = mod.lora_B["default"].weight.detach().numpy().T  # [r, out]
        # singular vectors are conditioned by the spectral gaps: 1e-4 of the weights' scale
        tol = 1e-4 * float(np.abs(mod.base_layer.weight.detach().numpy()).max())
        if "a0" in ad:  # data-driven: A, B themselves (PiSSA: up to each component's sign)
            sign = np.sign(np.sum(pa * ad["a"], axis=0)) if "pissa" in variant else 1.0
            np.testing.assert_allclose(ad["a"] * sign, pa, atol=tol)
            np.testing.assert_allclose(ad["b"] * np.reshape(sign, (-1, 1)), pb, atol=tol)
            # PEFT's residual base = our W - s·a0·b0
            w = base[name].weight.detach().numpy().T
            res = mod.base_layer.weight.detach().numpy().T
            np.testing.assert_allclose(w - float(ad["scale"]) * ad["a0"] @ ad["b0"], res,
                                       atol=tol)  # fmt: skip
        else:  # kaiming A from torch's RNG is not ours: B = 0 and the same bound
            assert np.all(pb == 0) and np.all(ad["b"] == 0)
        if "m" in ad:
            pm = mod.lora_magnitude_vector["default"].weight.detach().numpy()
            np.testing.assert_allclose(ad["m"], pm, rtol=1e-5)

    # 2. logits with a non-zero B (the same values both sides)
    rng = np.random.default_rng(3)
    for _, _, ad in iter_adapters(lora):
        ad["b"] = ad["b"] + rng.normal(scale=0.05, size=ad["b"].shape).astype(np.float32)
        if "m" in ad:
            ad["m"] = ad["m"] * (1 + rng.normal(scale=0.05, size=ad["m"].shape)).astype(np.float32)
    _set_peft(peft_model, lora, lm.config)
    ids = np.random.default_rng(4).integers(0, lm.config.vocab_size, (2, 12))
    peft_model.eval()
    with torch.no_grad():
        theirs = peft_model(input_ids=torch.tensor(ids)).logits.numpy()
    ours = _logits(lm, jax.tree.map(jnp.asarray, lora), ids)
    np.testing.assert_allclose(ours, theirs, atol=2e-5 * np.abs(theirs).max(), rtol=0)

    # 3. 20 AdamW steps on the same batches: the same losses
    batches = _batches(lm.config.vocab_size)
    our_losses, trained = _our_losses(lm, jax.tree.map(jnp.asarray, lora), batches)
    opt = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=OPTIM["lr"],
                            betas=(0.9, 0.999), eps=1e-6, weight_decay=0.01)  # fmt: skip
    their_losses = _peft_losses(peft_model, opt, batches)
    assert their_losses[-1] < their_losses[0] - 0.05  # it trained
    np.testing.assert_allclose(our_losses, their_losses, rtol=0, atol=1e-4)

    # 4. export -> PeftModel.from_pretrained on the untouched base: our logits
    out = save_peft(trained, lm.config, tmp_path / "export", params=lm.params)
    fresh = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32,
                                                 attn_implementation="eager")  # fmt: skip
    loaded = PeftModel.from_pretrained(fresh, out).eval()
    with torch.no_grad():
        theirs = loaded(input_ids=torch.tensor(ids)).logits.numpy()
    ours = _logits(lm, trained, ids)
    np.testing.assert_allclose(ours, theirs, atol=2e-5 * np.abs(theirs).max(), rtol=0)
    # 5. and back: the PEFT folder imports to the same logits
    back = load_peft(out, lm.config)
    np.testing.assert_allclose(_logits(lm, back, ids), theirs,
                               atol=2e-5 * np.abs(theirs).max(), rtol=0)  # fmt: skip
    # 6. PEFT's own trained adapter, as PEFT saves it for an untouched base (DoRA as is;
    # PiSSA/OLoRA converted with path_initial_model_for_weight_conversion, which PEFT does for
    # lora_A/lora_B only, so not with DoRA), imports to the trained PEFT model's logits
    if "use_dora" in peft_kwargs and "init_lora_weights" in peft_kwargs:
        return  # DoRA over PiSSA: PEFT has no conversion for it
    kw = (
        {"path_initial_model_for_weight_conversion": str(tmp_path / "peft_init")}
        if converts
        else {}
    )
    peft_model.save_pretrained(tmp_path / "peft_trained", **kw)
    peft_model.eval()
    with torch.no_grad():
        theirs = peft_model(input_ids=torch.tensor(ids)).logits.numpy()
    imported = load_peft(tmp_path / "peft_trained", lm.config)
    np.testing.assert_allclose(_logits(lm, imported, ids), theirs,
                               atol=2e-5 * np.abs(theirs).max(), rtol=0)  # fmt: skip


# the real model's cases: every variant's mechanism once (lora-jax config, PEFT kwargs, LoRA+
# ratio, A's lr: OLoRA's B starts non-zero, so B's 16x lr at 1e-3 diverges in PEFT too)
REAL_CASES = {
    "dora+pissa": ({"variant": "dora", "init": "pissa"},
                   {"use_dora": True, "init_lora_weights": "pissa"}, None, 1e-3),
    "olora+loraplus": ({"init": "olora"}, {"init_lora_weights": "olora"}, 16.0, 1e-4),
}  # fmt: skip


@pytest.mark.slow
@pytest.mark.torch
@pytest.mark.parametrize("case", list(REAL_CASES))
def test_real_smollm2_variants_equal_peft(case, smollm2_gguf):  # noqa: F811
    """The real SmolLM2-135M (GGUF, dequantized to fp32 on both sides, q,v at r = 8): DoRA over
    PiSSA, and OLoRA trained with LoRA+ (B at 16 x A's lr; PEFT's create_loraplus_optimizer):
    PEFT's init on transformers' GGUF model (A·B, m), with B moved the logits (one forward),
    and 20 AdamW steps on the same E2E-style batches the losses (1e-4 absolute; measured
    2.6e-5 for DoRA over PiSSA, loss 5.92 -> 1.30; 4.1e-5 for OLoRA + LoRA+, 6.40 -> 0.74)."""
    import torch
    from transformers import AutoModelForCausalLM

    ours_cfg, peft_kwargs, ratio, lr = REAL_CASES[case]
    lm = load_model(str(smollm2_gguf))
    lcfg = LoraConfig(r=8, alpha=16, targets="qv", **ours_cfg)
    lora, _ = init(jax.random.key(0), lm.params, lcfg, lora_modules(lm.config))
    lora = jax.tree.map(np.asarray, lora)
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # see test_smollm2.py: contention made torch's pool 10x slower
    try:
        from peft import LoraConfig as PeftConfig
        from peft import get_peft_model
        from peft.optimizers import create_loraplus_optimizer

        hf = AutoModelForCausalLM.from_pretrained(
            smollm2_gguf.parent, gguf_file=smollm2_gguf.name, dtype=torch.float32,
            attn_implementation="eager",
        )  # fmt: skip
        pm = get_peft_model(hf, PeftConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"],
                                           **peft_kwargs))  # fmt: skip
        for ad, _name, mod in _peft_modules(pm, lora, lm.config):
            pa = mod.lora_A["default"].weight.detach().numpy().T
            pb = mod.lora_B["default"].weight.detach().numpy().T
            # the top-r subspace's factors: near-equal singular values of the real weights leave
            # their vectors free to rotate inside the cluster, so compare A·B (what the model
            # sees); fp32 SVDs of two LAPACK builds agree to eps·‖W‖/gap: 1e-3 of its scale
            prod = pa @ pb
            np.testing.assert_allclose(ad["a"] @ ad["b"], prod, atol=1e-3 * np.abs(prod).max())
            if "m" in ad:
                pm_m = mod.lora_magnitude_vector["default"].weight.detach().numpy()
                np.testing.assert_allclose(ad["m"], pm_m, rtol=1e-5)
        rng = np.random.default_rng(3)
        for _, _, ad in iter_adapters(lora):
            ad["b"] = ad["b"] + rng.normal(scale=0.02, size=ad["b"].shape).astype(np.float32)
        _set_peft(pm, lora, lm.config)
        ids = np.asarray([lm.tokenizer.encode("name[The Eagle] food[French] area[riverside]")])
        with torch.no_grad():
            theirs = pm.eval()(input_ids=torch.tensor(ids)).logits.numpy()
        ours = _logits(lm, jax.tree.map(jnp.asarray, lora), ids)
        np.testing.assert_allclose(ours, theirs, atol=1e-4 * np.abs(theirs).max(), rtol=0)
        # 20 AdamW steps on the same E2E-style batches (2 x 24 tokens): the same losses
        texts = ["name[The Eagle] eatType[coffee shop] food[French] area[riverside] || The Eagle",
                 "name[Alimentum] area[city centre] familyFriendly[no] || Alimentum is not",
                 "name[Blue Spice] food[Chinese] priceRange[cheap] || Blue Spice serves cheap",
                 "name[Cotto] eatType[pub] near[The Portland Arms] || Cotto is a pub near"]  # fmt: skip
        rows = np.asarray([(lm.tokenizer.encode(t) * 4)[:24] for t in texts], np.int32)
        batches = [{"input_ids": rows[2 * (i % 2):2 * (i % 2) + 2],
                    "attention_mask": np.ones((2, 24), np.int32),
                    "loss_mask": np.ones((2, 24), np.float32)} for i in range(20)]  # fmt: skip
        adamw = dict(betas=(0.9, 0.999), eps=1e-6)
        our_losses, _ = _our_losses(lm, jax.tree.map(jnp.asarray, lora), batches, lr=lr,
                                    loraplus_lr_ratio=ratio)  # fmt: skip
        trainable = [p for p in pm.parameters() if p.requires_grad]
        opt = (torch.optim.AdamW(trainable, lr=lr, weight_decay=0.01, **adamw) if ratio is None
               else create_loraplus_optimizer(pm, torch.optim.AdamW, lr=lr, loraplus_lr_ratio=ratio,
                                              loraplus_weight_decay=0.01, **adamw))  # fmt: skip
        their_losses = _peft_losses(pm, opt, batches)
    finally:
        torch.set_num_threads(threads)
    print(
        f"{case}: max |loss difference| {np.abs(np.subtract(our_losses, their_losses)).max():.2e},"
        f" PEFT's loss {their_losses[0]:.3f} -> {their_losses[-1]:.3f}"
    )
    assert their_losses[-1] < their_losses[0] - 0.1  # it trained
    np.testing.assert_allclose(our_losses, their_losses, rtol=0, atol=1e-4)
