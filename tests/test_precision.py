"""The precision policy (lora_jax/precision.py, config group precision=): resolution per
backend, and under bf16 the LoRA factors and optimizer state stay fp32, the frozen base is
bf16, the loss is fp32, finite and close to the fp32 loss (real SmolLM2, slow)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lora_jax.lora import LoraConfig
from lora_jax.lora import init as lora_init
from lora_jax.models import precision
from lora_jax.models.config import ModelConfig
from lora_jax.models.registry import build_model, lora_modules
from lora_jax.train.optimizer import build_optimizer
from lora_jax.train.step import make_eval_loss, make_train_step

OPTIM = dict(name="adamw", lr=1e-3, b1=0.9, b2=0.999, eps=1e-6, weight_decay=0.01,
             schedule="constant", warmup_steps=0, grad_clip=None, grad_accum=1)  # fmt: skip


def test_auto_is_fp32_on_cpu_and_bf16_on_accelerators():
    auto = {"compute": "auto", "base": "auto", "matmul": None}
    p = precision.resolve(auto, backend="cpu")
    assert (p.compute, p.base) == ("float32", "float32")
    for backend in ("gpu", "tpu"):
        p = precision.resolve(auto, backend=backend)
        assert (p.compute, p.base) == ("bfloat16", "bfloat16")
    p = precision.resolve("fp32", backend="gpu")
    assert (p.compute, p.base) == ("float32", "float32")
    # model.dtype / model.param_dtype, when set, win over the policy
    p = precision.resolve(auto, None, "bfloat16", backend="cpu")
    assert (p.compute, p.base) == ("float32", "bfloat16")
    with pytest.raises(ValueError, match="precision.compute"):
        precision.resolve({"compute": "fp8", "base": "auto"}, backend="cpu")
    with pytest.raises(ValueError, match="precision=.*auto, fp32, bf16"):
        precision.resolve("half", backend="cpu")


def _bf16_step(module, frozen, cfg, ids):
    """Two train steps under the bf16 policy -> (lora, opt_state, metrics)."""
    lcfg = LoraConfig.from_dict({"r": 4, "targets": "all", "seed": 0})
    lora, _ = lora_init(jax.random.PRNGKey(1), frozen, lcfg, lora_modules(cfg))
    tx, _ = build_optimizer(OPTIM, lora, 10)
    opt = tx.init(lora)
    batch = {"input_ids": ids, "attention_mask": np.ones_like(ids),
             "loss_mask": np.ones(ids.shape, np.float32)}  # fmt: skip
    step = make_train_step(module, tx)
    for i in range(2):
        lora, opt, m = step(lora, opt, frozen, batch, jax.random.PRNGKey(i))
    return lora, opt, m


def _assert_policy_dtypes(frozen, lora, opt, m):
    assert {x.dtype for x in jax.tree.leaves(frozen)} == {jnp.dtype(jnp.bfloat16)}
    assert {x.dtype for x in jax.tree.leaves(lora)} == {jnp.dtype(jnp.float32)}
    floats = [x for x in jax.tree.leaves(opt) if jnp.issubdtype(x.dtype, jnp.floating)]
    assert floats and {x.dtype for x in floats} == {jnp.dtype(jnp.float32)}
    assert m["loss"].dtype == jnp.float32 and np.isfinite(float(m["loss"]))
    # the update reached B (zero at init) through the bf16 compute
    assert any(float(jnp.abs(ad).max()) > 0 for ad in jax.tree.leaves(lora) if ad.ndim == 2)


def test_bf16_policy_keeps_lora_and_optimizer_fp32_tiny():
    cfg = ModelConfig(model_type="llama", vocab_size=128, hidden_size=32, num_layers=2,
                      num_heads=4, num_kv_heads=2, head_dim=8, intermediate_size=64,
                      max_position_embeddings=64)  # fmt: skip
    p = precision.resolve("bf16", backend="cpu")
    module = build_model(cfg, p.compute, p.base)
    ids = np.random.default_rng(0).integers(0, 128, (2, 12)).astype(np.int32)
    frozen = module.init(jax.random.PRNGKey(0), ids)["params"]
    lora, opt, m = _bf16_step(module, frozen, cfg, ids)
    _assert_policy_dtypes(frozen, lora, opt, m)


@pytest.mark.slow
def test_bf16_loss_close_to_fp32_on_smollm2():
    """Real SmolLM2-135M (GGUF), 2 × 32 tokens of text: the bf16-policy loss (bf16 base and
    compute, fp32 logits and loss) is finite and within 1% of the fp32 loss (measured: 4.7895
    fp32 vs 4.8025 bf16, 0.27%). bf16 keeps 8 significant bits (rounding 2^-9 ≈ 0.2% per
    operation); the dtype invariants of the step are checked on the tiny model above."""
    import os

    from lora_jax.models.pretrained import load_model

    path = os.environ.get("LORA_JAX_SMOLLM2_GGUF")
    if not path:
        pytest.fail("LORA_JAX_SMOLLM2_GGUF is not set: export it from /work/shared/bin/get-smollm2")
    lm = load_model(path, "float32", "float32")
    text = ("The E2E dataset contains restaurant descriptions. name[The Eagle], eatType[coffee "
            "shop], food[French], priceRange[moderate], area[riverside] The Eagle is a coffee "
            "shop near the river that serves French food at moderate prices.")  # fmt: skip
    ids = np.asarray((lm.tokenizer.encode(text) * 2)[:64], np.int32).reshape(2, 32)
    batch = {"input_ids": ids, "attention_mask": np.ones_like(ids),
             "loss_mask": np.ones(ids.shape, np.float32)}  # fmt: skip
    with jax.default_matmul_precision("highest"):
        nll32, n = make_eval_loss(lm.module)(None, lm.params, batch)
    p = precision.resolve("bf16", backend="cpu")
    module16 = build_model(lm.config, p.compute, p.base)
    frozen16 = jax.tree.map(lambda x: x.astype(p.base), lm.params)
    nll16, _ = make_eval_loss(module16)(None, frozen16, batch)
    loss32, loss16 = float(nll32 / n), float(nll16 / n)
    assert np.isfinite(loss16) and 1.0 < loss32 < 10.0
    print(f"SmolLM2 loss fp32 {loss32:.5f} bf16 {loss16:.5f}")
    assert abs(loss16 - loss32) <= 0.01 * loss32, (loss16, loss32)
