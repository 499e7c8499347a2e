"""Shared pieces of the 8-device tests: a tiny Llama (GQA, untied head) with LoRA on every
linear layer, its optimizer and one batch; the same for one model of each other family."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from lora_jax.lora import LoraConfig
from lora_jax.lora import init as lora_init
from lora_jax.models.config import ModelConfig
from lora_jax.models.registry import build_model, lora_modules
from lora_jax.train.optimizer import build_optimizer

# Every size divisible by 8 where fsdp=8 should shard, so the 1/N memory check is exact
# except for the norm scales (d=64 divides too).
CFG = ModelConfig(model_type="llama", vocab_size=256, hidden_size=64, num_layers=2, num_heads=4,
                  num_kv_heads=2, head_dim=16, intermediate_size=128, max_position_embeddings=64)  # fmt: skip
OPTIM = dict(name="adamw", lr=1e-2, b1=0.9, b2=0.999, eps=1e-6, weight_decay=0.01,
             schedule="constant", warmup_steps=0, grad_clip=None, grad_accum=1)  # fmt: skip


def pytest_configure(config):
    if jax.device_count() != 8:
        raise pytest.UsageError(
            "tests/sharding/multidevice needs 8 devices: run it through tests/sharding/test_spawn.py "
            "(sets XLA_FLAGS=--xla_force_host_platform_device_count=8)"
        )


# One model of each other family, the same sizes: Qwen2 (q/k/v biases), Gemma 2 (sandwich
# norms, alternating windows, soft-capping, tied head), Gemma 3 (q/k norms, local RoPE base),
# Phi-3 (loaded fused, kept split; partial rotary).
FAMILIES = {
    "qwen2": CFG.replace(model_type="qwen2", attention_bias=True),
    "gemma2": CFG.replace(model_type="gemma2", tie_word_embeddings=True, activation="gelu_pytorch_tanh",
                          sliding_window=4, layer_types=("sliding_attention", "full_attention"),
                          query_pre_attn_scalar=16, attn_logit_softcapping=20.0,
                          final_logit_softcapping=10.0),
    "gemma3_text": CFG.replace(model_type="gemma3_text", tie_word_embeddings=True,
                               activation="gelu_pytorch_tanh", sliding_window=4, qk_norm=True,
                               layer_types=("sliding_attention", "full_attention"),
                               query_pre_attn_scalar=16, rope_local_theta=10000.0),
    "phi3": CFG.replace(model_type="phi3", partial_rotary_factor=0.5, sliding_window=6),
}  # fmt: skip


def make_setup(cfg: ModelConfig):
    """``(module, frozen, lora, tx, batch)`` for ``cfg``, host copies (every test places its own:
    the steps donate their inputs)."""
    module = build_model(cfg)
    ids = np.zeros((1, 8), np.int32)
    frozen = module.init(jax.random.PRNGKey(0), ids)["params"]
    lcfg = LoraConfig.from_dict({"r": 8, "targets": "all", "seed": 0})
    lora, _ = lora_init(jax.random.PRNGKey(1), frozen, lcfg, lora_modules(cfg))
    # B = 0 at init would make the first step's base-path gradients trivial: randomise B.
    g = np.random.default_rng(2)
    lora = jax.tree.map(
        lambda x: (0.1 * g.standard_normal(x.shape)).astype(np.float32) if x.ndim == 2 else x,
        jax.device_get(lora),
    )
    tx, _ = build_optimizer(OPTIM, lora, 10)
    rng = np.random.default_rng(0)
    batch = {
        "input_ids": rng.integers(0, cfg.vocab_size, (8, 16)).astype(np.int32),
        "attention_mask": np.ones((8, 16), np.int32),
        "loss_mask": np.ones((8, 16), np.float32),
    }
    batch["attention_mask"][:3, 12:] = 0  # some padding
    return module, jax.device_get(frozen), jax.device_get(lora), tx, batch


@pytest.fixture(scope="session")
def setup():
    return make_setup(CFG)
