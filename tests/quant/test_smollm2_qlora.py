"""The real SmolLM2-135M-Instruct Q4_1 GGUF with ``model.quant=keep``: its 4-bit blocks stay
packed (resident frozen bytes ≤ 0.6× the model's bf16 size), its logits equal the model
dequantized to fp32 by gguf-py, and a short QLoRA run lowers the loss as the fp32 run does."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from lora_jax.lora import LoraConfig
from lora_jax.lora import init as lora_init
from lora_jax.models.pretrained import load_model
from lora_jax.models.registry import lora_modules
from lora_jax.quant import frozen_bytes, is_quantized
from lora_jax.train.step import make_train_step
from tests.models.conftest_gguf import smollm2_gguf  # noqa: F401

pytestmark = pytest.mark.slow

TEXT = [
    "The Eagle is a coffee shop that serves French food in the city centre near Burger King.",
    "Loch Fyne is a family-friendly restaurant providing Italian food at a moderate price.",
]


@pytest.fixture(scope="module")
def models(smollm2_gguf):  # noqa: F811
    """(kept, reference): the Q4_1 blocks kept packed (embeddings/norms in bf16), and the same
    params with every kept kernel dequantized to fp32 by gguf-py's numpy reference (what the
    loader does without ``quant=keep``), so only where the blocks are dequantized differs."""
    from gguf import GGMLQuantizationType
    from gguf.quants import dequantize

    kept = load_model(str(smollm2_gguf), param_dtype="bfloat16", quant="keep")

    def reference(x):
        if not is_quantized(x):
            return x
        qt = GGMLQuantizationType[x.kind.upper()]
        return jnp.asarray(dequantize(np.asarray(x.data["blocks"]), qt).T)  # [in, out]

    return kept, jax.tree.map(reference, kept.params, is_leaf=is_quantized)


def test_kept_q4_1_logits_and_resident_bytes(models):
    kept, ref = models
    fb = frozen_bytes(kept.params)
    bf16_size = 2 * fb["weights"]  # the fp32-dequantized model stored in bf16
    assert fb["quantized_weights"] > 0.75 * fb["weights"]  # every projection of the 30 blocks
    assert fb["bytes"] <= 0.6 * bf16_size, (fb, bf16_size)
    # Q4_1: 20 bytes per 32 weights = 5 bits/weight, as on disk
    assert fb["quantized_bytes"] * 8 == 5 * fb["quantized_weights"]
    ids = jnp.asarray([kept.tokenizer.encode(TEXT[0])[:16]])
    with jax.default_matmul_precision("highest"):
        fwd = jax.jit(lambda p: kept.module.apply({"params": p}, ids)[0])
        got, want = np.asarray(fwd(kept.params)), np.asarray(fwd(ref))
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-4 * np.abs(want).max())


def test_short_qlora_run_lowers_the_loss_like_the_fp32_run(models):
    kept, ref = models
    tok = kept.tokenizer
    rows = [tok.encode(t)[:16] for t in TEXT]
    ids = jnp.asarray([r + [0] * (16 - len(r)) for r in rows], jnp.int32)
    mask = jnp.asarray([[1] * len(r) + [0] * (16 - len(r)) for r in rows], jnp.int32)
    batch = {"input_ids": ids, "attention_mask": mask, "loss_mask": mask}
    cfg = LoraConfig(r=8, alpha=16, targets="q")
    lora0, _ = lora_init(jax.random.key(0), kept.params, cfg, lora_modules(kept.config))
    tx = optax.adam(5e-3)
    step = make_train_step(kept.module, tx)
    losses = {}
    for name, frozen in (("qlora", kept.params), ("fp32", ref)):
        lora, opt = jax.tree.map(jnp.array, lora0), tx.init(lora0)
        losses[name] = []
        for i in range(5):
            lora, opt, m = step(lora, opt, frozen, batch, jax.random.key(i))
            losses[name].append(float(m["loss"]))
    q, d = np.array(losses["qlora"]), np.array(losses["fp32"])
    assert q[-1] < 0.8 * q[0], q  # it learns
    # the same trajectory: the two bases are the same weights dequantized in two places
    np.testing.assert_allclose(q, d, rtol=1e-3)
