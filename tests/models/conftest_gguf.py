"""GGUF test helpers: a small re-implementation of llama.cpp's ``convert_hf_to_gguf.py`` for
tiny Llama, Qwen2/3, Gemma 2/3, Phi-3 and GPT-2 state dicts, and the fixtures locating the real SmolLM2 and Gemma 3 GGUFs.

Import into a test module: ``from conftest_gguf import smollm2_gguf, write_gguf  # noqa: F401``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

SMOLLM2_ENV = "LORA_JAX_SMOLLM2_GGUF"
GEMMA3_ENV = "LORA_JAX_GEMMA3_GGUF"

# HF module name -> llama.cpp name (gguf-py tensor_mapping.py, MODEL_ARCH.LLAMA / GPT2)
LLAMA_NAMES = {
    "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm",
    "post_attention_layernorm": "ffn_norm",
}  # fmt: skip
QWEN3_NAMES = {**LLAMA_NAMES, "self_attn.q_norm": "attn_q_norm", "self_attn.k_norm": "attn_k_norm"}
GEMMA_NAMES = {  # Gemma 2/3's sandwich norms (gguf-py tensor_mapping.py, MODEL_ARCH.GEMMA2/3)
    **QWEN3_NAMES, "post_attention_layernorm": "post_attention_norm",
    "pre_feedforward_layernorm": "ffn_norm", "post_feedforward_layernorm": "post_ffw_norm",
}  # fmt: skip
LLAMA_LIKE = ("llama", "qwen2", "qwen3", "gemma2", "gemma3")
PHI3_NAMES = {  # gguf-py tensor_mapping.py, MODEL_ARCH.PHI3: the fused weights stay fused
    "self_attn.qkv_proj": "attn_qkv", "self_attn.o_proj": "attn_output",
    "mlp.gate_up_proj": "ffn_up", "mlp.down_proj": "ffn_down",
    "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
}  # fmt: skip
GPT2_NAMES = {
    "ln_1": "attn_norm", "attn.c_attn": "attn_qkv", "attn.c_proj": "attn_output",
    "ln_2": "ffn_norm", "mlp.c_fc": "ffn_up", "mlp.c_proj": "ffn_down",
}  # fmt: skip


def llama_cpp_permute(w: np.ndarray, n_head: int, n_head_kv: int | None) -> np.ndarray:
    """Verbatim from llama.cpp convert_hf_to_gguf.py ``LlamaModel.permute``."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return (
        w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
        .swapaxes(1, 2)
        .reshape(w.shape)
    )


def gguf_name(hf: str, arch: str) -> str:
    llama_top = {
        "model.embed_tokens": "token_embd",
        "model.norm": "output_norm",
        "lm_head": "output",
    }
    top = {
        **{a: llama_top for a in LLAMA_LIKE},
        "phi3": llama_top,
        "gpt2": {"transformer.wte": "token_embd", "transformer.wpe": "position_embd",
                 "transformer.ln_f": "output_norm", "lm_head": "output"},
    }[arch]  # fmt: skip
    stem, kind = hf.rsplit(".", 1)
    if stem in top:
        return f"{top[stem]}.{kind}"
    parts = stem.split(".")
    layer, module = parts[2], ".".join(parts[3:])
    names = {"llama": LLAMA_NAMES, "qwen2": LLAMA_NAMES, "qwen3": QWEN3_NAMES,
             "gemma2": GEMMA_NAMES, "gemma3": GEMMA_NAMES, "phi3": PHI3_NAMES,
             "gpt2": GPT2_NAMES}[arch]  # fmt: skip
    return f"blk.{layer}.{names[module]}.{kind}"


def tokenizer_metadata(folder: Path) -> dict[str, Any]:
    """GGUF tokenizer fields for a byte-level BPE ``tokenizer.json`` (as llama.cpp's
    ``_set_vocab_gpt2`` writes them)."""
    tj = json.loads((folder / "tokenizer.json").read_text())
    vocab = dict(tj["model"]["vocab"])
    added = {t["content"]: t for t in tj["added_tokens"]}
    for t in added.values():
        vocab[t["content"]] = t["id"]
    tokens = [tok for tok, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
    types = [3 if t in added and added[t]["special"] else 1 for t in tokens]
    merges = [m if isinstance(m, str) else " ".join(m) for m in tj["model"]["merges"]]
    return {"tokens": tokens, "types": types, "merges": merges}


def write_gguf(
    path: Path,
    arch: str,
    cfg: dict[str, Any],
    state: dict[str, np.ndarray],
    qtypes: dict[str, str] | str = "F32",
    tokenizer: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write ``state`` (HF names, HF layout, float32) as a llama.cpp-style GGUF.

    qtypes: one GGML type name for every 2-D weight, or {hf_name: type}; 1-D tensors stay F32.
    tokenizer: {"tokens", "types", "merges", "bos", "eos", "pad", "pre", "chat_template"}.
    """
    import gguf

    w = gguf.GGUFWriter(str(path), arch)
    w.add_name((extra or {}).get("name", f"tiny-{arch}"))
    if arch in LLAMA_LIKE:
        w.add_block_count(cfg["num_hidden_layers"])
        w.add_context_length(cfg["max_position_embeddings"])
        w.add_embedding_length(cfg["hidden_size"])
        w.add_feed_forward_length(cfg["intermediate_size"])
        w.add_head_count(cfg["num_attention_heads"])
        w.add_head_count_kv(cfg["num_key_value_heads"])
        rp = cfg.get("rope_parameters") or {}  # transformers 5; per layer type for Gemma 3
        rp = rp.get("full_attention", rp)
        w.add_rope_freq_base(float(cfg.get("rope_theta") or rp.get("rope_theta") or 10000.0))
        w.add_layer_norm_rms_eps(float(cfg["rms_norm_eps"]))
        head_dim = cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]
        w.add_rope_dimension_count(head_dim)
        w.add_key_length(head_dim)
        w.add_value_length(head_dim)
        w.add_vocab_size(cfg["vocab_size"])
        if arch in ("gemma2", "gemma3"):  # as Gemma2Model / Gemma3Model.set_gguf_parameters
            w.add_sliding_window(cfg["sliding_window"])
            if cfg.get("attn_logit_softcapping"):
                w.add_attn_logit_softcapping(cfg["attn_logit_softcapping"])
            if cfg.get("final_logit_softcapping"):
                w.add_final_logit_softcapping(cfg["final_logit_softcapping"])
            if cfg.get("layer_types"):  # one flag per layer, true = sliding (newer files)
                sliding = [t == "sliding_attention" for t in cfg["layer_types"]]
                w.add_sliding_window_pattern(sliding)
            local = (cfg.get("rope_parameters") or {}).get("sliding_attention", {})
            swa_theta = local.get("rope_theta") or cfg.get("rope_local_base_freq")
            if arch == "gemma3" and swa_theta:
                w.add_rope_freq_base_swa(float(swa_theta))
    elif arch == "phi3":
        # as llama.cpp's Phi3MiniModel.set_gguf_parameters / generate_extra_tensors
        d, h = cfg["hidden_size"], cfg["num_attention_heads"]
        rope = cfg.get("rope_scaling") or cfg.get("rope_parameters") or {}  # transformers 4 / 5
        orig = cfg.get("original_max_position_embeddings") or cfg["max_position_embeddings"]
        w.add_context_length(cfg["max_position_embeddings"])
        w.add_rope_scaling_orig_ctx_len(orig)
        w.add_embedding_length(d)
        w.add_feed_forward_length(cfg["intermediate_size"])
        w.add_block_count(cfg["num_hidden_layers"])
        w.add_head_count(h)
        w.add_head_count_kv(cfg["num_key_value_heads"])
        w.add_layer_norm_rms_eps(float(cfg["rms_norm_eps"]))
        w.add_rope_dimension_count(int(cfg.get("partial_rotary_factor", 1.0) * d) // h)
        w.add_rope_freq_base(float(cfg.get("rope_theta") or rope.get("rope_theta") or 10000.0))
        w.add_sliding_window(cfg.get("sliding_window") or 0)
        if rope.get("long_factor"):
            import math

            scale = cfg["max_position_embeddings"] / orig
            w.add_rope_scaling_attn_factors(math.sqrt(1 + math.log(scale) / math.log(orig)))
            for name in ("long", "short"):
                w.add_tensor(
                    f"rope_factors_{name}.weight", np.asarray(rope[f"{name}_factor"], np.float32)
                )
    else:
        w.add_block_count(cfg["n_layer"])
        w.add_context_length(cfg["n_positions"])
        w.add_embedding_length(cfg["n_embd"])
        w.add_feed_forward_length(4 * cfg["n_embd"])
        w.add_head_count(cfg["n_head"])
        w.add_layer_norm_eps(float(cfg.get("layer_norm_epsilon", 1e-5)))
    if tokenizer:
        w.add_tokenizer_model("gpt2")
        w.add_tokenizer_pre(tokenizer.get("pre", "gpt2"))
        w.add_token_list(tokenizer["tokens"])
        w.add_token_types(tokenizer["types"])
        w.add_token_merges(tokenizer["merges"])
        w.add_bos_token_id(tokenizer["bos"])
        w.add_eos_token_id(tokenizer["eos"])
        if tokenizer.get("pad") is not None:
            w.add_pad_token_id(tokenizer["pad"])
        w.add_add_bos_token(bool(tokenizer.get("add_bos", False)))
        if tokenizer.get("chat_template"):
            w.add_chat_template(tokenizer["chat_template"])
    for hf, t in state.items():
        name = gguf_name(hf, arch)
        t = np.asarray(t, dtype=np.float32)
        part = name.split(".")[-2]
        if arch in ("gemma2", "gemma3") and name.endswith("norm.weight"):
            t = t + np.float32(1.0)  # llama.cpp's norm_shift: Gemma's norms stored as 1 + w
        if arch == "llama" and part == "attn_q":
            t = llama_cpp_permute(t, cfg["num_attention_heads"], cfg["num_attention_heads"])
        elif arch == "llama" and part == "attn_k":
            t = llama_cpp_permute(t, cfg["num_attention_heads"], cfg["num_key_value_heads"])
        elif (
            arch == "gpt2"
            and part in ("attn_qkv", "attn_output", "ffn_up", "ffn_down")
            and t.ndim == 2
        ):
            t = t.T  # llama.cpp GPT2Model transposes Conv1D weights
        t = np.ascontiguousarray(t)
        q = qtypes.get(hf, "F32") if isinstance(qtypes, dict) else qtypes
        if t.ndim == 1:
            q = "F32"
        qt = gguf.GGMLQuantizationType[q]
        if qt == gguf.GGMLQuantizationType.F32:
            w.add_tensor(name, t)
        elif qt == gguf.GGMLQuantizationType.F16:
            w.add_tensor(name, t.astype(np.float16))
        else:
            w.add_tensor(name, gguf.quants.quantize(t, qt), raw_dtype=qt)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.fixture(scope="session")
def smollm2_gguf() -> Path:
    """The real SmolLM2-135M-Instruct Q4_1 GGUF; fails (not skips) when it is not configured."""
    value = os.environ.get(SMOLLM2_ENV)
    if not value:
        pytest.fail(
            f"{SMOLLM2_ENV} is not set. Run: export {SMOLLM2_ENV}=$(/work/shared/bin/get-smollm2) "
            "(or `-m 'not slow'` to skip real-model tests)"
        )
    path = Path(value)
    if not path.is_file():
        pytest.fail(f"{SMOLLM2_ENV}={value} is not a file; re-run /work/shared/bin/get-smollm2")
    return path


@pytest.fixture(scope="session")
def gemma3_gguf() -> Path:
    """The real Gemma 3 270M (base) Q4_K_M GGUF; fails (not skips) when it is not configured."""
    value = os.environ.get(GEMMA3_ENV)
    if not value:
        pytest.fail(
            f"{GEMMA3_ENV} is not set. Run: export {GEMMA3_ENV}=$(/work/shared/bin/get-gemma3) "
            "(or `-m 'not slow'` to skip real-model tests)"
        )
    path = Path(value)
    if not path.is_file():
        pytest.fail(f"{GEMMA3_ENV}={value} is not a file; re-run /work/shared/bin/get-gemma3")
    return path
