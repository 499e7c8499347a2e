"""Closed-form trainable counts on the real model shapes (shape-only: jax.eval_shape)."""

import jax
import jax.numpy as jnp
import pytest

import lora_jax.lora as L
from lora_jax.models.config import ModelConfig
from lora_jax.models.registry import build_model, lora_modules

GPT2_MEDIUM = {
    "model_type": "gpt2",
    "vocab_size": 50257,
    "n_embd": 1024,
    "n_layer": 24,
    "n_head": 16,
    "n_positions": 1024,
}
SMOLLM2_135M = {"model_type": "llama", "vocab_size": 49152, "hidden_size": 576, "num_hidden_layers": 30,
                "num_attention_heads": 9, "num_key_value_heads": 3, "intermediate_size": 1536,
                "tie_word_embeddings": True}  # fmt: skip


def _shapes(hf):
    cfg = ModelConfig.from_hf(hf)
    module = build_model(cfg)
    ids = jnp.zeros((1, 4), jnp.int32)
    params = jax.eval_shape(lambda: module.init(jax.random.PRNGKey(0), ids))["params"]
    return cfg, params


def _count(hf, **kw):
    cfg, params = _shapes(hf)
    targets = L.resolve(L.LoraConfig(**kw), params, lora_modules(cfg))
    return sum(t.num_params for t in targets), targets


def test_gpt2_medium_qv_r4_is_the_papers_393216():
    n, targets = _count(GPT2_MEDIUM, r=4, targets="qv")
    assert n == 2 * 24 * (1024 + 1024) * 4 == 393_216  # [P] Table 3 "0.35M"
    assert {t.name for t in targets} == {"q", "v"} and all(t.d_out == 1024 for t in targets)


@pytest.mark.parametrize(
    "targets, per_layer",
    [
        ("q", (576 + 576)),
        ("qv", (576 + 576) + (576 + 192)),  # GQA: v projects to 3 heads x 64
        ("attn", 2 * (576 + 576) + 2 * (576 + 192)),
        ("mlp", 2 * (576 + 1536) + (1536 + 576)),
    ],
)
def test_smollm2_counts(targets, per_layer):
    n, _ = _count(SMOLLM2_135M, r=8, targets=targets)
    assert n == 30 * per_layer * 8
