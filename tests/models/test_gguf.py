"""GGUF loading: tiny models written llama.cpp-style (conftest_gguf.write_gguf) read back equal to
the originals (exact for F32, within quantization error otherwise) and equal to what transformers
reads from the same file; K-quant blocks against transformers' own torch dequantizer; the real
SmolLM2 Q4_1 GGUF against transformers (slow)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest_gguf import smollm2_gguf, tokenizer_metadata, write_gguf  # noqa: F401

from lora_jax.models.config import ModelConfig
from lora_jax.models.load import load_checkpoint
from lora_jax.models.load.gguf_file import dequantize_tensor, load_gguf, reverse_permute

pytestmark = pytest.mark.torch


STRUCTURE = ("model_type", "vocab_size", "hidden_size", "num_layers", "num_heads", "num_kv_heads",
             "head_dim", "intermediate_size", "tie_word_embeddings", "attention_bias", "activation")  # fmt: skip


def _hf_state(folder: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    return load_file(str(folder / "model.safetensors"))


def _tiny(make_tiny_hf_model, kind: str, **overrides) -> tuple[Path, dict, dict, dict]:
    """A tiny HF model whose vocabulary equals its tokenizer's (as a GGUF needs)."""
    folder = make_tiny_hf_model(kind, vocab_size=296, **overrides)
    cfg = json.loads((folder / "config.json").read_text())
    tok = tokenizer_metadata(folder)
    assert len(tok["tokens"]) == cfg["vocab_size"]
    tok.update(
        bos=0, eos=0, chat_template="{% for m in messages %}{{ m['content'] }}\n{% endfor %}"
    )
    return folder, cfg, _hf_state(folder), tok


@pytest.fixture(scope="module")
def llama64(make_tiny_hf_model):
    # rows of 64 / 128 values: whole blocks for the 32-value quant types
    return _tiny(make_tiny_hf_model, "llama_gqa", hidden_size=64, intermediate_size=128)


def _transformers_gguf_state(path: Path) -> dict[str, np.ndarray]:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(
        path.parent, gguf_file=path.name, dtype=torch.float32
    )
    return {k: v.numpy() for k, v in model.state_dict().items()}


def test_llama_f32_round_trip_is_exact(llama64, tmp_path):
    folder, cfg, state, tok = llama64
    path = write_gguf(tmp_path / "m.gguf", "llama", cfg, state, "F32", tok)
    hf_config, ours, tokenizer = load_checkpoint(str(path))
    assert sorted(ours) == sorted(state)
    for k in state:
        np.testing.assert_array_equal(ours[k], state[k], err_msg=k)
    # the file really is permuted: without the un-permute q/k would differ
    q = "model.layers.0.self_attn.q_proj.weight"
    from gguf import GGUFReader

    raw = {t.name: t for t in GGUFReader(str(path)).tensors}
    assert not np.array_equal(dequantize_tensor(raw["blk.0.attn_q.weight"]), state[q])
    ref, got = ModelConfig.from_hf(cfg), ModelConfig.from_hf(hf_config)
    fields = STRUCTURE + ("rope_theta", "max_position_embeddings")
    assert [getattr(got, f) for f in fields] == [getattr(ref, f) for f in fields]
    assert got.norm_eps == pytest.approx(ref.norm_eps, rel=1e-6)  # stored as float32
    assert tokenizer is not None and tokenizer.eos_id == 0


@pytest.mark.parametrize(
    "qtype, rel_tol",
    [("F16", 1e-3), ("BF16", 8e-3), ("Q8_0", 1e-2), ("Q5_0", 6e-2), ("Q5_1", 6e-2),
     ("Q4_0", 0.12), ("Q4_1", 0.12)],
)  # fmt: skip
def test_llama_quantized_matches_original_and_transformers(llama64, tmp_path, qtype, rel_tol):
    folder, cfg, state, tok = llama64
    path = write_gguf(tmp_path / f"m-{qtype}.gguf", "llama", cfg, state, qtype, tok)
    _, ours, _ = load_checkpoint(str(path))
    for k, w in state.items():
        err = np.linalg.norm(ours[k] - w) / np.linalg.norm(w)
        assert err < rel_tol, (k, err)
    ref = _transformers_gguf_state(path)
    ref.pop("lm_head.weight", None) if cfg.get("tie_word_embeddings") else None
    assert sorted(ours) == sorted(ref)
    for k in ref:
        np.testing.assert_allclose(ours[k], ref[k], rtol=0, atol=1e-6, err_msg=k)


def test_tied_llama_with_explicit_head_dim(make_tiny_hf_model, tmp_path):
    folder, cfg, state, tok = _tiny(make_tiny_hf_model, "llama_tied")
    assert "lm_head.weight" not in state
    path = write_gguf(tmp_path / "t.gguf", "llama", cfg, state, "F32", tok)
    hf_config, ours, _ = load_checkpoint(str(path))
    assert hf_config["tie_word_embeddings"] is True and hf_config["head_dim"] == 16
    assert sorted(ours) == sorted(state)
    for k in state:
        np.testing.assert_array_equal(ours[k], state[k], err_msg=k)


def test_gpt2_round_trip_transposes_conv1d(make_tiny_hf_model, tmp_path):
    folder, cfg, state, tok = _tiny(make_tiny_hf_model, "gpt2")
    path = write_gguf(tmp_path / "g.gguf", "gpt2", cfg, state, "F32", tok)
    hf_config, ours, tokenizer = load_checkpoint(str(path))
    assert sorted(ours) == sorted(state)
    for k in state:
        np.testing.assert_array_equal(ours[k], state[k], err_msg=k)
    got, ref = ModelConfig.from_hf(hf_config), ModelConfig.from_hf(cfg)
    fields = STRUCTURE + ("max_position_embeddings",)
    assert [getattr(got, f) for f in fields] == [getattr(ref, f) for f in fields]
    assert tokenizer is not None and tokenizer.vocab_size == cfg["vocab_size"]


@pytest.mark.parametrize("kind", ["phi3", "phi3_longrope"])
def test_phi3_gguf_reads_as_its_safetensors_checkpoint(make_tiny_hf_model, tmp_path, kind):
    """A Phi-3 GGUF written as llama.cpp's Phi3MiniModel writes it (fused attn_qkv / ffn_up,
    unpermuted; the rotary dimension count; LongRoPE factors as rope_factors_* tensors) reads
    back to the checkpoint's tensors and model config, and transformers' GGUF loader reads the
    same tensors from the file."""
    folder, cfg, state, tok = _tiny(make_tiny_hf_model, kind)
    tok["pad"] = 0  # else transformers' Phi3Config pads with 32000, past this vocabulary
    path = write_gguf(tmp_path / "p.gguf", "phi3", cfg, state, "F32", tok)
    hf_config, ours, _ = load_checkpoint(str(path))
    assert sorted(ours) == sorted(state)  # fused, as in model.safetensors
    for k in state:
        np.testing.assert_array_equal(ours[k], state[k], err_msg=k)
    got, ref = ModelConfig.from_hf(hf_config), ModelConfig.from_hf(cfg)
    fields = STRUCTURE + ("rope_theta", "max_position_embeddings", "sliding_window",
                          "partial_rotary_factor")  # fmt: skip
    assert [getattr(got, f) for f in fields] == [getattr(ref, f) for f in fields]
    if kind == "phi3_longrope":
        for key in ("long_factor", "short_factor", "original_max_position_embeddings"):
            np.testing.assert_allclose(got.rope_scaling[key], ref.rope_scaling[key], rtol=1e-6)
    else:
        assert got.rope_scaling is None and ref.rope_scaling is None
    theirs = _transformers_gguf_state(path)
    for k in state:
        np.testing.assert_array_equal(theirs[k], state[k], err_msg=k)


FAMILY_FIELDS = ("sliding_window", "layer_types", "rope_local_theta", "qk_norm",
                 "query_pre_attn_scalar", "attn_logit_softcapping", "final_logit_softcapping")  # fmt: skip


@pytest.mark.parametrize(
    "kind, arch, overrides",
    # (transformers' GGUF loader leaves Qwen3's head_dim at its default, 128, as real Qwen3s)
    [("qwen2", "qwen2", {}), ("qwen3", "qwen3", {"head_dim": 128}),
     # llama.cpp's Gemma scales scores by head_dim^-0.5 (query_pre_attn_scalar = head_dim)
     ("gemma2", "gemma2", {"query_pre_attn_scalar": 16}),
     ("gemma3", "gemma3", {"query_pre_attn_scalar": 16})],
)  # fmt: skip
def test_family_gguf_reads_as_its_safetensors_checkpoint(
    make_tiny_hf_model, tmp_path, kind, arch, overrides
):
    """Qwen2 (biases), Qwen3 (q/k norms), Gemma 2 (soft-caps, alternating windows) and Gemma 3
    (per-layer pattern, local RoPE base) written as llama.cpp writes them (unpermuted; Gemma's
    norms stored as 1 + w) read back to the checkpoint's tensors and config; transformers' GGUF
    loader reads the same tensors from the file."""
    folder, cfg, state, tok = _tiny(make_tiny_hf_model, kind, **overrides)
    tok["pad"] = 0
    path = write_gguf(tmp_path / f"{arch}.gguf", arch, cfg, state, "F32", tok)
    hf_config, ours, _ = load_checkpoint(str(path))
    ref_state = {
        k: v
        for k, v in state.items()
        if k != "lm_head.weight" or not cfg.get("tie_word_embeddings")
    }
    assert sorted(ours) == sorted(ref_state)
    for k in ref_state:  # Gemma's norms: (1 + w) - 1 in fp32, to one ulp of 1.x (1.2e-7)
        np.testing.assert_allclose(ours[k], state[k], rtol=0, atol=1.2e-7, err_msg=k)
    got, ref = ModelConfig.from_hf(hf_config), ModelConfig.from_hf(cfg)
    fields = STRUCTURE + ("rope_theta", "max_position_embeddings") + FAMILY_FIELDS
    assert [getattr(got, f) for f in fields] == [getattr(ref, f) for f in fields]
    theirs = _transformers_gguf_state(path)
    for k in ref_state:
        np.testing.assert_allclose(theirs[k], state[k], rtol=0, atol=1.2e-7, err_msg=k)


def test_reverse_permute_inverts_llama_cpp_permute():
    from conftest_gguf import llama_cpp_permute

    w = np.arange(6 * 16 * 3, dtype=np.float32).reshape(6 * 16, 3)
    for n_head, n_kv in [(6, 6), (6, 2), (6, 3)]:
        rows = w[: n_kv * 16] if n_kv != n_head else w
        permuted = llama_cpp_permute(rows, n_head, n_kv)
        assert not np.array_equal(permuted, rows)
        np.testing.assert_array_equal(reverse_permute(permuted, n_kv), rows)


@pytest.mark.parametrize("qtype", ["Q4_K", "Q6_K", "Q8_0", "Q4_0", "Q4_1"])
def test_block_dequantization_matches_transformers_torch_kernels(tmp_path, qtype):
    """gguf.quants.quantize has no K-quant encoder, so write random blocks (with finite fp16
    scales) and compare against transformers' independent torch dequantizer."""
    import gguf
    import torch
    from transformers.integrations.gguf.dequant import dequantize as torch_dequantize

    qt = gguf.GGMLQuantizationType[qtype]
    block_elems, block_bytes = gguf.GGML_QUANT_SIZES[qt]
    rows, cols = 4, 2 * 256
    rng = np.random.default_rng(0)
    blocks = rng.integers(0, 256, size=(rows * cols // block_elems, block_bytes), dtype=np.uint8)
    half = {"Q4_K": [0, 2], "Q6_K": [208], "Q8_0": [0], "Q4_0": [0], "Q4_1": [0, 2]}[qtype]
    for off in half:  # finite, modest fp16 scales instead of random bit patterns
        scales = rng.uniform(-0.05, 0.05, size=len(blocks)).astype(np.float16)
        blocks[:, off : off + 2] = scales.view(np.uint8).reshape(-1, 2)
    raw = blocks.reshape(rows, -1)
    w = gguf.GGUFWriter(str(tmp_path / "k.gguf"), "llama")
    w.add_tensor("blk.0.ffn_up.weight", raw, raw_dtype=qt)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    (tensor,) = gguf.GGUFReader(str(tmp_path / "k.gguf")).tensors
    ours = dequantize_tensor(tensor)
    ref = torch_dequantize(torch.from_numpy(raw.reshape(-1).copy()), int(qt)).numpy()
    assert ours.shape == (rows, cols) and ours.dtype == np.float32
    np.testing.assert_allclose(ours.reshape(-1), ref, rtol=1e-6, atol=1e-7)


def test_unsupported_architecture_and_unknown_tensor_are_named(tmp_path):
    import gguf

    w = gguf.GGUFWriter(str(tmp_path / "b.gguf"), "bert")
    w.add_tensor("token_embd.weight", np.zeros((4, 8), np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(ValueError, match="architecture 'bert' is not supported"):
        load_gguf(tmp_path / "b.gguf")

    from lora_jax.models.load.gguf_file import hf_name

    with pytest.raises(ValueError, match="blk.0.attn_sinks.weight"):
        hf_name("blk.0.attn_sinks.weight", "llama")


@pytest.mark.slow
def test_smollm2_gguf_matches_transformers(smollm2_gguf):  # noqa: F811
    hf_config, ours, _ = load_checkpoint(str(smollm2_gguf))
    ref = _transformers_gguf_state(smollm2_gguf)
    assert hf_config["tie_word_embeddings"] is True
    ref.pop("lm_head.weight")
    assert sorted(ours) == sorted(ref)
    for k in ref:
        np.testing.assert_allclose(ours[k], ref[k], rtol=0, atol=1e-6, err_msg=k)
    cfg = ModelConfig.from_hf(hf_config)
    assert (cfg.num_layers, cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads) == (30, 576, 9, 3)
    assert (cfg.intermediate_size, cfg.vocab_size, cfg.rope_theta) == (1536, 49152, 100000.0)
