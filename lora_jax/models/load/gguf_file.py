"""Read a llama.cpp GGUF file into an HF config dict and an HF-named float32 state dict.

What llama.cpp's ``convert_hf_to_gguf.py`` changed, undone here:
- names: ``blk.N.attn_q`` ... -> ``model.layers.N.self_attn.q_proj`` ... (tables below);
- Llama/Mistral q and k rows are permuted for ggml's rotary layout (``LlamaModel.permute``);
  k uses the kv head count (GQA). Qwen2, Qwen3 and Gemma are stored unpermuted;
- Gemma's RMSNorm weights are stored plus one (``Gemma2Model``/``Gemma3Model.modify_tensors``
  add ``norm_shift``): one is subtracted again, as transformers' ``Gemma2TensorProcessor``;
- GPT-2 ``Conv1D`` weights ([in, out] in HF) are stored transposed ([out, in]);
- Phi-3 keeps ``qkv_proj`` / ``gate_up_proj`` fused (named as in HF here; split later by
  ``convert.unfuse`` as for its safetensors), writes the rotary dimension count instead of
  ``partial_rotary_factor`` and LongRoPE's factors as ``rope_factors_long/short`` tensors;
- quantized blocks (Q8_0, Q4_0, Q4_1, Q4_K, Q6_K, ... anything ``gguf.quants`` knows) are
  dequantized to float32 with ``gguf.quants.dequantize``; with ``keep_quantized=True`` the Linear
  weights of the blocks in Q8_0/Q4_0/Q4_1/Q5_0/Q4_K/Q6_K stay packed (:class:`KeptBlocks`, for
  ``model.quant=keep``): their rows are output features and each row is a run of blocks along the
  input, so the q/k un-permutation moves whole rows and GPT-2's transpose is left to the kernel.
The config dict uses transformers' names, so ``ModelConfig.from_hf`` reads it unchanged.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

import numpy as np

from lora_jax.errors import ConfigError, DataError, MissingFile

# llama.cpp tensor name (after "blk.N.") -> HF module name (after "model.layers.N.")
_LLAMA_BLOCK = {
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
}
_LLAMA_TOP = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}
_QWEN3_BLOCK = {
    **_LLAMA_BLOCK,
    "attn_q_norm": "self_attn.q_norm",
    "attn_k_norm": "self_attn.k_norm",
}
_GEMMA_BLOCK = {
    **_QWEN3_BLOCK,
    "post_attention_norm": "post_attention_layernorm",
    "ffn_norm": "pre_feedforward_layernorm",
    "post_ffw_norm": "post_feedforward_layernorm",
}

# Phi-3: llama.cpp keeps the fused qkv_proj / gate_up_proj (convert_hf_to_gguf.py Phi3MiniModel;
# unpermuted); lora-jax splits them at load as for the safetensors checkpoint (convert.unfuse)
_PHI3_BLOCK = {
    "attn_qkv": "self_attn.qkv_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_up": "mlp.gate_up_proj",
    "ffn_down": "mlp.down_proj",
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
}
# LongRoPE factors (Phi-3 128k), stored as tensors; they go into the config's rope_scaling
_ROPE_FACTORS = ("rope_factors_long.weight", "rope_factors_short.weight")

_GPT2_BLOCK = {
    "attn_norm": "ln_1",
    "attn_qkv": "attn.c_attn",
    "attn_output": "attn.c_proj",
    "ffn_norm": "ln_2",
    "ffn_up": "mlp.c_fc",
    "ffn_down": "mlp.c_proj",
}
_GPT2_TOP = {
    "token_embd": "transformer.wte",
    "position_embd": "transformer.wpe",
    "output_norm": "transformer.ln_f",
    "output": "lm_head",
}
# GPT-2 Conv1D weights, stored transposed by llama.cpp (convert_hf_to_gguf.py GPT2Model).
_GPT2_CONV1D = ("attn_qkv", "attn_output", "ffn_up", "ffn_down")

# general.architecture -> (HF model_type, per-block map, top-level map, HF block prefix)
_ARCH = {
    "llama": ("llama", _LLAMA_BLOCK, _LLAMA_TOP, "model.layers"),
    "qwen2": ("qwen2", _LLAMA_BLOCK, _LLAMA_TOP, "model.layers"),
    "qwen3": ("qwen3", _QWEN3_BLOCK, _LLAMA_TOP, "model.layers"),
    "gemma2": ("gemma2", _GEMMA_BLOCK, _LLAMA_TOP, "model.layers"),
    "gemma3": ("gemma3_text", _GEMMA_BLOCK, _LLAMA_TOP, "model.layers"),
    "phi3": ("phi3", _PHI3_BLOCK, _LLAMA_TOP, "model.layers"),
    "gpt2": ("gpt2", _GPT2_BLOCK, _GPT2_TOP, "transformer.h"),
}
_GEMMA = ("gemma2", "gemma3")
# The Linear weights of a block (the LoRA-targetable kernels), per architecture.
_PROJECTIONS = {
    "llama": ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"),
    "gpt2": _GPT2_CONV1D,
    "phi3": ("attn_qkv", "attn_output", "ffn_up", "ffn_down"),
}
for _arch in ("qwen2", "qwen3", *_GEMMA):
    _PROJECTIONS[_arch] = _PROJECTIONS["llama"]
_BLOCK_NAME = re.compile(r"^blk\.(\d+)\.(\w+)\.(weight|bias)$")
_TOP_NAME = re.compile(r"^(\w+)\.(weight|bias)$")


def read_metadata(reader: Any) -> dict[str, Any]:
    """All GGUF key/values as plain Python values (strings, numbers, lists)."""
    meta = {}
    for key, field in reader.fields.items():
        if key.startswith("GGUF."):
            continue
        meta[key] = field.contents()
    return meta


def reverse_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """Undo llama.cpp's ``permute(w, n_head, n_head_kv)`` on q/k rows. w: [n_head*head_dim, ...].

    llama.cpp: ``w.reshape(n_head, 2, d // n_head // 2, *rest).swapaxes(1, 2).reshape(w.shape)``
    (n_head is the kv head count for k); the inverse swaps the same axes of the other split.
    """
    d = w.shape[0]
    if d % (2 * n_head):
        raise DataError(f"cannot un-permute {w.shape} rows over {n_head} heads (odd head_dim?)")
    return w.reshape(n_head, d // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _arch_of(meta: dict[str, Any], path: Path) -> tuple[str, str]:
    arch = meta.get("general.architecture")
    if arch not in _ARCH:
        raise ConfigError(
            f"{path}: GGUF architecture {arch!r} is not supported; lora-jax reads "
            f"{', '.join(sorted(_ARCH))} GGUF files"
        )
    model_type = _ARCH[arch][0]
    name = str(meta.get("general.name", "")).lower()
    if (
        arch == "llama" and "mistral" in name
    ):  # llama.cpp writes Mistral as "llama"; as transformers
        model_type = "mistral"
    return arch, model_type


def config_from_metadata(
    meta: dict[str, Any], tensor_names: list[str], path: Path | str = "<gguf>"
) -> dict[str, Any]:
    """Build a transformers ``config.json`` dict from GGUF metadata."""
    arch, model_type = _arch_of(meta, Path(path))

    def get(key: str, default: Any = None, required: bool = True) -> Any:
        full = f"{arch}.{key}"
        if full not in meta:
            if required and default is None:
                raise DataError(f"{path}: GGUF metadata lacks {full!r}, needed for the config")
            return default
        return meta[full]

    tokens = meta.get("tokenizer.ggml.tokens")
    vocab_size = int(get("vocab_size", len(tokens) if tokens else None))
    tie = "output.weight" not in tensor_names
    special = {
        "bos_token_id": meta.get("tokenizer.ggml.bos_token_id"),
        "eos_token_id": meta.get("tokenizer.ggml.eos_token_id"),
        "pad_token_id": meta.get("tokenizer.ggml.padding_token_id"),
    }
    if arch == "gpt2":
        d = int(get("embedding_length"))
        return {
            "model_type": "gpt2",
            "architectures": ["GPT2LMHeadModel"],
            "vocab_size": vocab_size,
            "n_embd": d,
            "n_layer": int(get("block_count")),
            "n_head": int(get("attention.head_count")),
            "n_positions": int(get("context_length")),
            "n_ctx": int(get("context_length")),
            "n_inner": int(get("feed_forward_length", 4 * d)),
            "layer_norm_epsilon": float(get("attention.layer_norm_epsilon", 1e-5)),
            "activation_function": "gelu_new",
            "tie_word_embeddings": tie,
            **special,
        }
    if "rope_freqs.weight" in tensor_names:
        raise NotImplementedError(
            f"{path} stores per-frequency RoPE factors (rope_freqs.weight, Llama 3.1-style "
            "scaling), which lora-jax cannot express as an HF rope_scaling yet; use the model's "
            "safetensors checkpoint instead"
        )
    d, h = int(get("embedding_length")), int(get("attention.head_count"))
    config: dict[str, Any] = {
        "model_type": model_type,
        "architectures": [f"{model_type.capitalize()}ForCausalLM"],
        "vocab_size": vocab_size,
        "hidden_size": d,
        "intermediate_size": int(get("feed_forward_length")),
        "num_hidden_layers": int(get("block_count")),
        "num_attention_heads": h,
        "num_key_value_heads": int(get("attention.head_count_kv", h)),
        "head_dim": int(get("attention.key_length", get("rope.dimension_count", d // h))),
        "max_position_embeddings": int(get("context_length", 2048)),
        "rms_norm_eps": float(get("attention.layer_norm_rms_epsilon", 1e-6)),
        "rope_theta": float(get("rope.freq_base", 10000.0)),
        "hidden_act": "silu",
        "tie_word_embeddings": tie,
        "attention_bias": any(n.endswith("attn_q.bias") for n in tensor_names),
        **special,
    }
    if arch in _GEMMA:
        config.update(_gemma_config(arch, get, config))
    if arch == "phi3":
        config.update(_phi3_config(get, config))
    scaling_type = get("rope.scaling.type", required=False)
    if scaling_type not in (None, "none"):
        config["rope_scaling"] = {
            "rope_type": scaling_type,
            "factor": float(get("rope.scaling.factor", 1.0)),
        }
        orig = get("rope.scaling.original_context_length", required=False)
        if orig is not None:
            config["rope_scaling"]["original_max_position_embeddings"] = int(orig)
    return config


def _gemma_config(arch: str, get: Any, config: dict[str, Any]) -> dict[str, Any]:
    """What a Gemma GGUF says (or llama.cpp assumes) beyond the Llama fields. llama.cpp
    (src/llama-model.cpp, LLM_ARCH_GEMMA2/GEMMA3) scales scores by head_dim^-0.5 except for
    the 27B models (62 / 46 layers: (hidden / heads)^-0.5), hard-codes Gemma 3's sliding
    pattern (5 sliding layers, then a global one) and its sliding layers' RoPE base (10k)
    unless the file states them; Gemma 2 alternates and soft-caps."""
    n, d, h = config["num_hidden_layers"], config["hidden_size"], config["num_attention_heads"]
    big = n == (62 if arch == "gemma3" else 46)  # the 27B models
    pattern = get("attention.sliding_window_pattern", 6 if arch == "gemma3" else 2, False)
    if isinstance(pattern, list):  # newer files: one flag per layer (true = sliding)
        types = ["sliding_attention" if p else "full_attention" for p in pattern]
    else:
        types = [
            "sliding_attention" if (i + 1) % int(pattern) else "full_attention" for i in range(n)
        ]
    out = {
        "hidden_activation": "gelu_pytorch_tanh",
        "query_pre_attn_scalar": d // h if big else config["head_dim"],
        "sliding_window": int(get("attention.sliding_window")),
        "layer_types": types,
        "attn_logit_softcapping": get("attn_logit_softcapping", None, False),
        "final_logit_softcapping": get("final_logit_softcapping", None, False),
    }
    if arch == "gemma3":
        out["rope_local_base_freq"] = float(get("rope.freq_base_swa", 10000.0, False))
    return out


def _phi3_config(get: Any, config: dict[str, Any]) -> dict[str, Any]:
    """Phi-3's fields as llama.cpp writes them (Phi3MiniModel.set_gguf_parameters): the rotary
    dimension count is ``partial_rotary_factor * head_dim`` (head_dim is hidden / heads, no key
    length is written), a sliding window of 0 means none (Phi-4-mini), and the pretraining
    length is ``rope.scaling.original_context_length`` (LongRoPE's switch point)."""
    head_dim = config["hidden_size"] // config["num_attention_heads"]
    rot = int(get("rope.dimension_count", head_dim, False))
    window = int(get("attention.sliding_window", 0, False))
    orig = get("rope.scaling.original_context_length", None, False)
    return {
        "head_dim": head_dim,
        "partial_rotary_factor": rot / head_dim,
        "sliding_window": window or None,
        "original_max_position_embeddings": int(orig or config["max_position_embeddings"]),
    }


def _longrope(reader: Any, config: dict[str, Any], path: Path) -> dict[str, Any] | None:
    """Phi-3 128k's ``rope_scaling`` from the ``rope_factors_long/short`` tensors, or None."""
    found = {t.name: t for t in reader.tensors if t.name in _ROPE_FACTORS}
    if not found:
        return None
    if len(found) != 2:
        raise DataError(f"{path}: has {sorted(found)} but LongRoPE needs both {_ROPE_FACTORS}")
    long, short = (dequantize_tensor(found[n]).reshape(-1) for n in _ROPE_FACTORS)
    return {
        "rope_type": "longrope",
        "long_factor": [float(x) for x in long],
        "short_factor": [float(x) for x in short],
        "original_max_position_embeddings": config["original_max_position_embeddings"],
    }


def hf_name(gguf_name: str, arch: str) -> str:
    """Map one llama.cpp tensor name to its transformers state-dict name."""
    _, block_map, top_map, prefix = _ARCH[arch]
    if m := _BLOCK_NAME.match(gguf_name):
        layer, part, kind = m.groups()
        if part in block_map:
            return f"{prefix}.{layer}.{block_map[part]}.{kind}"
    elif (m := _TOP_NAME.match(gguf_name)) and m.group(1) in top_map:
        return f"{top_map[m.group(1)]}.{m.group(2)}"
    raise DataError(
        f"GGUF tensor {gguf_name!r} has no transformers equivalent for architecture {arch!r}; "
        f"known block tensors: {sorted(block_map)}, top-level: {sorted(top_map)}"
    )


def dequantize_tensor(tensor: Any) -> np.ndarray:
    """A ``gguf.ReaderTensor`` as float32 numpy in row-major HF order [rows, cols]."""
    from gguf.quants import dequantize

    shape = tuple(int(s) for s in reversed(tensor.shape))  # ggml lists the fastest axis first
    try:
        w = dequantize(tensor.data, tensor.tensor_type)
    except NotImplementedError as e:
        raise NotImplementedError(
            f"GGUF tensor {tensor.name!r} uses {tensor.tensor_type.name}, which gguf.quants "
            "cannot dequantize; re-quantize the model to e.g. Q8_0, Q4_K or F16"
        ) from e
    return np.ascontiguousarray(np.asarray(w, dtype=np.float32).reshape(shape))


def kept_blocks(tensor: Any, arch: str) -> Any:
    """A block Linear weight as :class:`~lora_jax.quant.kernel.KeptBlocks` when its format can
    be dequantized on the fly; None for anything else (dequantized to float32 as usual)."""
    from lora_jax.quant.gguf_blocks import FORMATS
    from lora_jax.quant.kernel import KeptBlocks

    kind = tensor.tensor_type.name.lower()
    m = _BLOCK_NAME.match(tensor.name)
    if kind not in FORMATS or m is None or m.group(3) != "weight":
        return None
    if m.group(2) not in _PROJECTIONS[arch]:
        return None
    out, d_in = (int(s) for s in reversed(tensor.shape))  # ggml: fastest axis (input) first
    hf_shape = (d_in, out) if arch == "gpt2" else (out, d_in)  # GPT-2 Conv1D is [in, out]
    blocks = np.ascontiguousarray(np.asarray(tensor.data, dtype=np.uint8).reshape(out, -1))
    return KeptBlocks(kind, blocks, hf_shape, d_in)


def load_gguf(
    path: str | Path, keep_quantized: bool = False
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """``(hf_config, state, metadata)``; state is float32 with transformers' names and layouts,
    except the block Linear weights kept packed when ``keep_quantized`` (see :func:`kept_blocks`)."""
    from gguf import GGUFReader

    path = Path(path)
    if not path.is_file():
        raise MissingFile(f"GGUF file {path} does not exist")
    try:
        reader = GGUFReader(str(path))
        meta = read_metadata(reader)
    except Exception as e:  # gguf raises bare ValueError/IndexError/struct errors
        raise DataError(
            f"{path}: not a readable GGUF file ({type(e).__name__}: {e}); it is truncated, "
            "corrupt or not GGUF: download it again"
        ) from e
    size = path.stat().st_size
    for t in reader.tensors:
        if int(t.data_offset) + int(t.n_bytes) > size:
            raise DataError(
                f"{path}: truncated: tensor {t.name!r} needs bytes up to "
                f"{int(t.data_offset) + int(t.n_bytes):,} but the file has {size:,}; download it again"
            )
    names = [t.name for t in reader.tensors]
    config = config_from_metadata(meta, names, path)
    arch, _ = _arch_of(meta, path)
    if arch == "phi3" and (rope := _longrope(reader, config, path)) is not None:
        config["rope_scaling"] = rope
    n_head = config.get("num_attention_heads")
    n_kv = config.get("num_key_value_heads")
    state: dict[str, Any] = {}
    for tensor in reader.tensors:
        if tensor.name in _ROPE_FACTORS:
            continue
        part = tensor.name.split(".")[-2]
        kept = kept_blocks(tensor, arch) if keep_quantized else None
        if kept is not None:
            if arch == "llama" and part in ("attn_q", "attn_k"):  # permute whole rows of blocks
                rows = reverse_permute(kept.blocks, n_head if part == "attn_q" else n_kv)
                kept = dataclasses.replace(kept, blocks=np.ascontiguousarray(rows))
            state[hf_name(tensor.name, arch)] = kept
            continue
        w = dequantize_tensor(tensor)
        if arch in _GEMMA and tensor.name.endswith("norm.weight"):
            w = w - np.float32(1.0)  # stored as 1 + w (llama.cpp's norm_shift)
        if arch == "llama" and part in ("attn_q", "attn_k"):
            w = reverse_permute(w, n_head if part == "attn_q" else n_kv)
        elif arch == "gpt2" and part in _GPT2_CONV1D and tensor.name.endswith(".weight"):
            w = np.ascontiguousarray(w.T)
        state[hf_name(tensor.name, arch)] = w
    return config, state, meta
