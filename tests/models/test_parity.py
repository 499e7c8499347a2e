"""Our Flax models against transformers' PyTorch models on tiny random checkpoints."""

from __future__ import annotations

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from lora_jax.models import convert
from lora_jax.models.config import ModelConfig
from lora_jax.models.registry import build_model, lora_modules

KINDS = [
    "gpt2",
    "llama_gqa",
    "llama_tied",
    "qwen2",
    "llama3_rope",
    "mistral",
    "gemma3",
    "gemma2",
    "qwen3",
    "qwen2_window",
    "phi3",
    "phi3_longrope",
]


def load_dir(path: Path) -> tuple[ModelConfig, dict[str, np.ndarray]]:
    from safetensors.numpy import load_file

    cfg = ModelConfig.from_hf(json.loads((path / "config.json").read_text()))
    return cfg, load_file(str(path / "model.safetensors"))


def padded_batch(vocab: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Row 0 left-padded, row 1 right-padded, row 2 unpadded; positions as HF generate makes."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, vocab, (3, 11)).astype(np.int32)
    mask = np.ones_like(ids)
    mask[0, :4] = 0
    mask[1, -3:] = 0
    positions = np.maximum(np.cumsum(mask, axis=1) - 1, 0).astype(np.int32)
    return ids, mask, positions


def torch_logits(path: Path, ids, mask, positions) -> np.ndarray:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, attn_implementation="eager")
    model.eval()
    with torch.no_grad():
        out = model(
            input_ids=torch.tensor(ids, dtype=torch.long),
            attention_mask=torch.tensor(mask, dtype=torch.long),
            position_ids=torch.tensor(positions, dtype=torch.long),
        )
    return out.logits.float().numpy()


@pytest.mark.torch
@pytest.mark.parametrize("kind", KINDS)
def test_logits_match_transformers(kind, make_tiny_hf_model):
    path = make_tiny_hf_model(kind)
    cfg, state = load_dir(path)
    ids, mask, positions = padded_batch(cfg.vocab_size)
    ref = torch_logits(path, ids, mask, positions)
    params = convert.params_from_hf(state, cfg)
    module = build_model(cfg)
    # positions=None: the default (cumsum of the mask - 1) must equal what we passed to HF
    logits, cache = module.apply({"params": params}, jnp.asarray(ids), jnp.asarray(mask))
    assert cache is None
    assert logits.dtype == jnp.float32 and logits.shape == (3, 11, cfg.vocab_size)
    real = mask.astype(bool)
    assert np.abs(ref[real]).max() > 1.0  # the reference is not trivially small
    np.testing.assert_allclose(np.asarray(logits)[real], ref[real], atol=1e-4, rtol=0)


@pytest.mark.torch
def test_llama3_rope_scaling_is_exercised(make_tiny_hf_model):
    """Dropping rope_scaling must change the logits, else the llama3 parity test proves nothing."""
    cfg, state = load_dir(make_tiny_hf_model("llama3_rope"))
    ids, mask, _ = padded_batch(cfg.vocab_size)
    params = convert.params_from_hf(state, cfg)
    scaled, _ = build_model(cfg).apply({"params": params}, ids, mask)
    plain, _ = build_model(cfg.replace(rope_scaling=None)).apply({"params": params}, ids, mask)
    assert np.abs(np.asarray(scaled) - np.asarray(plain))[mask.astype(bool)].max() > 1e-3


@pytest.mark.torch
def test_longrope_past_the_original_length_matches_transformers(make_tiny_hf_model):
    """24 positions, past original_max_position_embeddings=16: transformers switches to the
    long factors for the whole call (longrope_frequency_update), and so do we; the short
    factors alone would differ (the switch is exercised)."""
    path = make_tiny_hf_model("phi3_longrope")
    cfg, state = load_dir(path)
    ids = np.random.default_rng(2).integers(0, cfg.vocab_size, (2, 24)).astype(np.int32)
    mask = np.ones_like(ids)
    positions = np.broadcast_to(np.arange(24, dtype=np.int32), ids.shape)
    ref = torch_logits(path, ids, mask, positions)
    params = convert.params_from_hf(state, cfg)
    with jax.default_matmul_precision("highest"):
        logits, _ = build_model(cfg).apply({"params": params}, ids, mask)
        short = {**cfg.rope_scaling, "long_factor": cfg.rope_scaling["short_factor"]}
        only_short, _ = build_model(cfg.replace(rope_scaling=short)).apply(
            {"params": params}, ids, mask
        )
    np.testing.assert_allclose(np.asarray(logits), ref, atol=1e-4, rtol=0)
    assert np.abs(np.asarray(only_short) - ref).max() > 1e-2


@pytest.mark.torch
def test_sliding_window_matches_transformers(make_tiny_hf_model):
    path = make_tiny_hf_model("mistral", sliding_window=4)
    cfg, state = load_dir(path)
    cfg = cfg.replace(sliding_window=4)  # ModelConfig.from_hf keeps it only with use_sliding_window
    ids = np.random.default_rng(1).integers(0, cfg.vocab_size, (2, 12)).astype(np.int32)
    mask = np.ones_like(ids)
    positions = np.broadcast_to(np.arange(12, dtype=np.int32), ids.shape)
    ref = torch_logits(path, ids, mask, positions)
    logits, _ = build_model(cfg).apply({"params": convert.params_from_hf(state, cfg)}, ids, mask)
    np.testing.assert_allclose(np.asarray(logits), ref, atol=1e-4, rtol=0)
    full, _ = build_model(cfg.replace(sliding_window=None)).apply(
        {"params": convert.params_from_hf(state, cfg)}, ids, mask
    )
    assert np.abs(np.asarray(full) - ref).max() > 1e-3


@pytest.mark.torch
@pytest.mark.parametrize(
    "kind", ["gpt2", "llama_gqa", "llama_tied", "qwen2", "gemma3", "qwen3", "phi3"]
)
def test_init_tree_equals_converted_tree_and_roundtrip(kind, make_tiny_hf_model):
    cfg, state = load_dir(make_tiny_hf_model(kind))
    params = convert.params_from_hf(state, cfg)
    module = build_model(cfg)
    init = jax.eval_shape(module.init, jax.random.key(0), jnp.zeros((1, 4), jnp.int32))["params"]
    shapes = lambda t: {k: (v.shape, v.dtype) for k, v in traverse_util.flatten_dict(t).items()}
    assert shapes(init) == shapes(params)
    back = convert.params_to_hf(params, cfg)
    assert set(back) == set(state)  # tied heads are not written, as save_pretrained does
    for name, tensor in state.items():
        np.testing.assert_array_equal(back[name], tensor, err_msg=name)


@pytest.mark.torch
def test_gpt2_checkpoint_without_transformer_prefix(tiny_gpt2_dir):
    """Original openai-community/gpt2 files name tensors ``h.0.attn...`` and carry mask buffers."""
    cfg, state = load_dir(tiny_gpt2_dir)
    stripped = {k.removeprefix("transformer."): v for k, v in state.items()}
    stripped["h.0.attn.bias"] = np.tril(np.ones((1, 1, 64, 64), np.float32))
    a = convert.params_from_hf(state, cfg)
    b = convert.params_from_hf(stripped, cfg)
    jax.tree.map(np.testing.assert_array_equal, a, b)


@pytest.mark.torch
def test_bf16_params_close_to_fp32(tiny_llama_dir):
    cfg, state = load_dir(tiny_llama_dir)
    ids, mask, _ = padded_batch(cfg.vocab_size)
    p32 = convert.params_from_hf(state, cfg)
    p16 = convert.params_from_hf(state, cfg, jnp.bfloat16)
    assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(p16))
    l32, _ = build_model(cfg).apply({"params": p32}, ids, mask)
    l16, _ = build_model(cfg, jnp.bfloat16, jnp.bfloat16).apply({"params": p16}, ids, mask)
    assert l16.dtype == jnp.float32
    real = mask.astype(bool)
    err = np.abs(np.asarray(l16) - np.asarray(l32))[real].max()
    assert err < 0.1 * np.abs(np.asarray(l32))[real].max()


@pytest.mark.torch
def test_missing_tensor_is_named(tiny_llama_dir):
    cfg, state = load_dir(tiny_llama_dir)
    del state["model.layers.1.mlp.up_proj.weight"]
    with pytest.raises(ValueError, match=r"model\.layers\.1\.mlp\.up_proj\.weight.*missing"):
        convert.params_from_hf(state, cfg)


@pytest.mark.torch
def test_untied_config_needs_lm_head(tiny_llama_dir):
    cfg, state = load_dir(tiny_llama_dir)
    del state["lm_head.weight"]
    with pytest.raises(ValueError, match="lm_head.weight"):
        convert.params_from_hf(state, cfg)


@pytest.mark.torch
def test_shape_mismatch_names_tensor_and_shapes(tiny_gpt2_dir):
    cfg, state = load_dir(tiny_gpt2_dir)
    state["transformer.h.1.attn.c_proj.weight"] = np.zeros((32, 33), np.float32)
    with pytest.raises(
        ValueError, match=r"transformer\.h\.1\.attn\.c_proj\.weight.*\(32, 33\).*\(32, 32\)"
    ):
        convert.params_from_hf(state, cfg)
    wrong = cfg.replace(intermediate_size=64)  # the config disagrees with the checkpoint (128)
    with pytest.raises(ValueError, match=r"transformer\.h\.0\.mlp\.c_fc\.\w+.* \(\w*,? ?128,?\)"):
        convert.params_from_hf(load_dir(tiny_gpt2_dir)[1], wrong)


def test_unsupported_architecture():
    with pytest.raises(ValueError, match="unsupported architecture.*gpt2, llama.*gemma3_text"):
        ModelConfig.from_hf({"model_type": "t5"})


def test_unsupported_rope_type():
    from lora_jax.models.llama import rope_inv_freq

    cfg = _tiny_llama_cfg().replace(rope_scaling={"rope_type": "yarn", "factor": 2.0})
    with pytest.raises(ValueError, match="yarn"):
        rope_inv_freq(cfg)


def test_lora_module_maps():
    assert lora_modules("gpt2") == {
        "attn.c_attn": ("q", "k", "v"),
        "attn.c_proj": ("o",),
        "mlp.c_fc": ("up",),
        "mlp.c_proj": ("down",),
    }
    llama = {
        "self_attn.q_proj": ("q",),
        "self_attn.k_proj": ("k",),
        "self_attn.v_proj": ("v",),
        "self_attn.o_proj": ("o",),
        "mlp.gate_proj": ("gate",),
        "mlp.up_proj": ("up",),
        "mlp.down_proj": ("down",),
    }
    assert lora_modules("llama") == llama
    assert lora_modules("qwen2") == llama
    assert lora_modules(_tiny_llama_cfg()) == llama
    with pytest.raises(ValueError, match="unknown model family"):
        lora_modules("t5")


def _tiny_llama_cfg() -> ModelConfig:
    return ModelConfig(
        model_type="llama", vocab_size=50, hidden_size=16, num_layers=2, num_heads=4,
        num_kv_heads=2, head_dim=4, intermediate_size=24, max_position_embeddings=32,
    )  # fmt: skip


def _merged(params, path: str, a, b, scale):
    """Params with ``kernel += scale * a @ b`` at ``path`` (kernel [in, out])."""
    flat = traverse_util.flatten_dict(params)
    key = (*path.split("/"), "kernel")
    flat[key] = flat[key] + scale * (a @ b)
    return traverse_util.unflatten_dict(flat)


def test_lora_zero_b_is_identity_and_nonzero_b_equals_merged_weight():
    cfg = _tiny_llama_cfg()
    module = build_model(cfg)
    ids = jnp.asarray(np.random.default_rng(0).integers(0, 50, (2, 7)), jnp.int32)
    params = jax.jit(module.init)(jax.random.key(0), ids)["params"]
    base, _ = module.apply({"params": params}, ids)
    a = jax.random.normal(jax.random.key(1), (16, 4))
    zero = {
        "layers_1": {
            "self_attn": {
                "v_proj": {"v": {"a": a, "b": jnp.zeros((4, 8)), "scale": jnp.asarray(2.0)}}
            }
        }
    }
    out, _ = module.apply({"params": params, "lora": zero}, ids)
    np.testing.assert_array_equal(np.asarray(out), np.asarray(base))
    b = jax.random.normal(jax.random.key(2), (4, 8))
    lora = {
        "layers_1": {"self_attn": {"v_proj": {"v": {"a": a, "b": b, "scale": jnp.asarray(2.0)}}}}
    }
    out, _ = module.apply({"params": params, "lora": lora}, ids)
    merged, _ = module.apply(
        {"params": _merged(params, "layers_1/self_attn/v_proj", a, b, 2.0)}, ids
    )
    assert np.abs(np.asarray(out) - np.asarray(base)).max() > 1e-3
    np.testing.assert_allclose(np.asarray(out), np.asarray(merged), atol=1e-5)


def test_gpt2_lora_on_v_block_only_changes_v_columns():
    """A LoRA on the fused c_attn's "v" block equals merging into the last d columns only."""
    cfg = ModelConfig(
        model_type="gpt2", vocab_size=50, hidden_size=16, num_layers=2, num_heads=2,
        num_kv_heads=2, head_dim=8, intermediate_size=64, max_position_embeddings=32,
        attention_bias=True, mlp_bias=True, tie_word_embeddings=True, activation="gelu_new",
    )  # fmt: skip
    module = build_model(cfg)
    ids = jnp.asarray(np.random.default_rng(0).integers(0, 50, (2, 7)), jnp.int32)
    params = jax.jit(module.init)(jax.random.key(0), ids)["params"]
    a = jax.random.normal(jax.random.key(1), (16, 2))
    b = jax.random.normal(jax.random.key(2), (2, 16))
    lora = {"h_0": {"attn": {"c_attn": {"v": {"a": a, "b": b, "scale": jnp.asarray(0.5)}}}}}
    out, _ = module.apply({"params": params, "lora": lora}, ids)
    b_full = jnp.concatenate([jnp.zeros((2, 32)), b], axis=1)  # q, k columns untouched
    merged, _ = module.apply({"params": _merged(params, "h_0/attn/c_attn", a, b_full, 0.5)}, ids)
    np.testing.assert_allclose(np.asarray(out), np.asarray(merged), atol=1e-5)


def test_lora_dropout_needs_rng_and_changes_output_only_when_not_deterministic():
    cfg = _tiny_llama_cfg()
    module = build_model(cfg, lora_dropout=0.5)
    ids = jnp.asarray(np.random.default_rng(0).integers(0, 50, (2, 7)), jnp.int32)
    params = jax.jit(module.init)(jax.random.key(0), ids)["params"]
    a = jax.random.normal(jax.random.key(1), (16, 4))
    b = jax.random.normal(jax.random.key(2), (4, 16))
    lora = {
        "layers_0": {"self_attn": {"q_proj": {"q": {"a": a, "b": b, "scale": jnp.asarray(1.0)}}}}
    }
    v = {"params": params, "lora": lora}
    det1, _ = module.apply(v, ids)
    det2, _ = module.apply(v, ids, deterministic=True)
    np.testing.assert_array_equal(np.asarray(det1), np.asarray(det2))
    drop, _ = module.apply(v, ids, deterministic=False, rngs={"dropout": jax.random.key(3)})
    assert np.abs(np.asarray(drop) - np.asarray(det1)).max() > 1e-4


@pytest.mark.torch
@pytest.mark.parametrize("fixture", ["tiny_gpt2_dir", "tiny_llama_dir"])
def test_load_model_from_folder(fixture, request):
    from lora_jax.models.pretrained import load_model

    path = request.getfixturevalue(fixture)
    lm = load_model(str(path))
    assert lm.tokenizer is not None and lm.config.family in ("gpt2", "llama")
    ids, mask, positions = padded_batch(lm.config.vocab_size)
    logits, _ = jax.jit(lm.module.apply)({"params": lm.params}, ids, mask)
    real = mask.astype(bool)
    ref = torch_logits(path, ids, mask, positions)
    np.testing.assert_allclose(np.asarray(logits)[real], ref[real], atol=1e-4, rtol=0)
    lm16 = load_model(str(path), dtype="bfloat16", param_dtype="bfloat16")
    assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(lm16.params))
