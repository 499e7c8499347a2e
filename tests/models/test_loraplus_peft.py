"""LoRA+ (optim.loraplus_lr_ratio): B's learning rate is ratio × A's, as PEFT's
``create_loraplus_optimizer`` defines it.

- by hand: one AdamW step; B's update is ratio × the update at A's learning rate;
- a pack's per-job transform (traced ratio) gives the solo transform's updates;
- 20 training steps of a tiny Llama from the same PEFT-made adapter on the same batches give
  PEFT's losses (torch AdamW over PEFT's parameter groups).

Precision: fp32 both sides; JAX matmuls at "highest" (exact fp32 dots on CPU), torch CPU fp32.
The two frameworks sum in different orders and Adam carries the differences forward, so the
losses agree to 1e-4 absolute over 20 steps; the one-step updates to 2e-5 relative (AdamW's
bias correction 1 - 0.999 rounded in fp32 is 1.3e-5 off).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lora_jax.export import load_peft
from lora_jax.models.pretrained import load_model
from lora_jax.train.optimizer import build_optimizer
from lora_jax.train.packed_step import job_hyperparams, job_optimizer
from lora_jax.train.step import make_train_step

OPTIM = {"name": "adamw", "lr": 1e-3, "b1": 0.9, "b2": 0.999, "eps": 1e-6, "weight_decay": 0.01,
         "schedule": "constant", "warmup_steps": 0, "grad_clip": None, "grad_accum": 1,
         "label_smoothing": 0.0}  # fmt: skip


def _tree(seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    mod = lambda i, o: {"a": jnp.asarray(rng.normal(size=(i, 4)), jnp.float32),  # noqa: E731
                        "b": jnp.asarray(rng.normal(size=(4, o)), jnp.float32),
                        "scale": jnp.asarray(2.0)}  # fmt: skip
    return {"layers_0": {"q": mod(8, 8), "v": mod(8, 6)}}


def test_b_update_is_ratio_times_its_update_at_a_lr_by_hand():
    lora, grads = _tree(0), _tree(1)
    tx, _ = build_optimizer(OPTIM | {"loraplus_lr_ratio": 16.0}, lora, total_steps=10)
    updates, _ = tx.update(grads, tx.init(lora), lora)
    lr, wd, eps = OPTIM["lr"], OPTIM["weight_decay"], OPTIM["eps"]
    for name in ("q", "v"):
        for leaf, ratio in (("a", 1.0), ("b", 16.0)):
            g, p = (
                np.asarray(grads["layers_0"][name][leaf]),
                np.asarray(lora["layers_0"][name][leaf]),
            )
            # step 1: m̂ = g, v̂ = g² (bias-corrected), decoupled decay lr·wd·p
            by_hand = -ratio * lr * (g / (np.abs(g) + eps) + wd * p)
            # 2e-5: optax's bias correction divides by 1 - 0.999 computed in fp32 (1.3e-5 off)
            np.testing.assert_allclose(np.asarray(updates["layers_0"][name][leaf]), by_hand,
                                       rtol=2e-5, atol=1e-9)  # fmt: skip
        assert float(updates["layers_0"][name]["scale"]) == 0.0  # frozen


def test_a_pack_job_transform_equals_the_solo_one():
    lora, grads = _tree(0), _tree(1)
    cfgs = [OPTIM | {"loraplus_lr_ratio": 16.0}, OPTIM | {"loraplus_lr_ratio": None}]
    lr_fns = [build_optimizer(c, lora, 10)[1] for c in cfgs]
    hp = job_hyperparams(cfgs, lr_fns, 10)
    for k, c in enumerate(cfgs):
        solo, _ = build_optimizer(c, lora, 10)
        packed = job_optimizer({n: v[k] for n, v in hp.items()}, lora, 1)
        u_solo, _ = solo.update(grads, solo.init(lora), lora)
        u_pack, _ = packed.update(grads, packed.init(lora), lora)
        for a, b in zip(jax.tree.leaves(u_pack), jax.tree.leaves(u_solo)):
            # the pack's b1/b2 are fp32 arrays, the solo's Python floats: bias corrections differ
            # in the last bits (~7e-6 relative on step 1)
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-5)


def test_full_finetuning_refuses_a_loraplus_ratio():
    with pytest.raises(Exception, match="loraplus_lr_ratio"):
        build_optimizer(OPTIM | {"loraplus_lr_ratio": 16.0}, {"w": jnp.zeros(3)}, 10,
                        every_leaf=True)  # fmt: skip


@pytest.mark.torch
def test_twenty_steps_equal_peft_loraplus(make_tiny_hf_model, tmp_path):
    import torch
    from peft import LoraConfig, get_peft_model
    from peft.optimizers import create_loraplus_optimizer
    from transformers import AutoModelForCausalLM

    path = make_tiny_hf_model("llama_gqa")
    torch.manual_seed(0)
    hf = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32,
                                              attn_implementation="eager")  # fmt: skip
    pcfg = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"],
                      lora_dropout=0.0)  # fmt: skip
    peft_model = get_peft_model(hf, pcfg)
    for n, p in peft_model.named_parameters():  # B != 0 from the start: A's lr matters at once
        if "lora_B" in n:
            torch.nn.init.normal_(p, std=0.05)
    peft_model.save_pretrained(tmp_path / "peft")
    lm = load_model(str(path))
    lora = load_peft(tmp_path / "peft", lm.config)

    ratio = 16.0
    opt = create_loraplus_optimizer(peft_model, torch.optim.AdamW, lr=OPTIM["lr"],
                                    loraplus_lr_ratio=ratio, loraplus_weight_decay=0.01,
                                    betas=(0.9, 0.999), eps=1e-6)  # fmt: skip
    batches = _batches(lm.config.vocab_size)
    ours = _our_losses(lm, lora, OPTIM | {"loraplus_lr_ratio": ratio}, batches)
    theirs = []
    peft_model.train()
    for batch in batches:
        t = torch.tensor(batch["input_ids"], dtype=torch.long)
        loss = peft_model(input_ids=t, labels=t).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        theirs.append(float(loss))
    assert theirs[-1] < theirs[0] - 0.05  # it trained
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-4)
    # and LoRA+ is not plain LoRA here: the same run at ratio 1 ends elsewhere
    plain = _our_losses(lm, load_peft(tmp_path / "peft", lm.config), OPTIM, batches)
    assert abs(ours[-1] - plain[-1]) > 1e-3


def _batches(vocab: int) -> list[dict]:
    """20 steps over two batches in turn: a loss that can fall."""
    data = np.random.default_rng(0).integers(0, vocab, (2, 4, 16)).astype(np.int32)
    return [{"input_ids": data[i % 2], "attention_mask": np.ones_like(data[0]),
             "loss_mask": np.ones(data[0].shape, np.float32)} for i in range(20)]  # fmt: skip


def _our_losses(lm, lora, optim: dict, batches: list[dict]) -> list[float]:
    tx, _ = build_optimizer(optim, lora, total_steps=len(batches))
    step = make_train_step(lm.module, tx)
    opt_state = tx.init(lora)
    losses = []
    with jax.default_matmul_precision("highest"):
        for batch in batches:
            lora, opt_state, m = step(lora, opt_state, lm.params, batch, None)
            losses.append(float(m["loss"]))
    return losses
