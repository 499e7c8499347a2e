"""Hugging Face state dict <-> our params pytree.

The mapping is derived from the module's own parameter tree (``jax.eval_shape`` of ``init``),
so it cannot drift from the model code: ``h_3/attn/c_attn/kernel`` <->
``transformer.h.3.attn.c_attn.weight``, ``layers_0/self_attn/q_proj/kernel`` <->
``model.layers.0.self_attn.q_proj.weight``. Kernels are ``[in, out]``: HF ``nn.Linear``
weights (``[out, in]``) are transposed, GPT-2's ``Conv1D`` weights are already ``[in, out]``.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from lora_jax.errors import DataError
from lora_jax.models.config import ModelConfig
from lora_jax.models.registry import as_dtype, build_model, fused_modules

log = logging.getLogger(__name__)

_LEAF = {"kernel": "weight", "scale": "weight", "embedding": "weight", "bias": "bias"}
# Buffers some checkpoints carry that are not parameters (causal masks, rotary tables).
_BUFFERS = re.compile(r"(\.attn\.(masked_)?bias$|rotary_emb\.inv_freq$)")


def param_shapes(cfg: ModelConfig) -> dict[tuple[str, ...], tuple[int, ...]]:
    """Flattened ``{path: shape}`` of the params ``build_model(cfg).init`` creates."""
    module = build_model(cfg)
    ids = jnp.zeros((1, 1), jnp.int32)
    tree = jax.eval_shape(lambda: module.init(jax.random.key(0), ids))["params"]
    return {k: v.shape for k, v in traverse_util.flatten_dict(tree).items()}


def hf_name(path: tuple[str, ...], cfg: ModelConfig) -> tuple[str, bool]:
    """Our param path -> (transformers name, whether the tensor is transposed)."""
    parts = [re.sub(r"^(h|layers)_(\d+)$", r"\1.\2", p) for p in path[:-1]]
    leaf = path[-1]
    name = ".".join([*parts, _LEAF[leaf]])
    transposed = leaf == "kernel" and cfg.family != "gpt2"  # GPT-2 Conv1D is [in, out]
    if parts[0] == "lm_head":
        return name, transposed
    prefix = "transformer." if cfg.family == "gpt2" else "model."
    return prefix + name, transposed


def _lookup(state_dict: dict[str, Any], name: str) -> Any:
    if name in state_dict:
        return state_dict[name]
    short = name.split(".", 1)[1]  # checkpoints saved from the base model lack the prefix
    if not name.startswith("lm_head") and short in state_dict:
        return state_dict[short]
    return None


_FUSED_KEY = re.compile(r"^(?P<pre>(?:.*\.)?layers\.(?P<idx>\d+)\.)(?P<mod>.+)\.weight$")


def unfuse(state_dict: dict[str, Any], cfg: ModelConfig) -> dict[str, Any]:
    """Phi-3's fused ``qkv_proj`` / ``gate_up_proj`` weights -> the q/k/v and gate/up weights
    this model keeps apart (rows in order, widths from the config). Other families: as given."""
    fused = fused_modules(cfg)
    if not fused:
        return state_dict
    shapes = param_shapes(cfg)
    out = dict(state_dict)
    for key, tensor in state_dict.items():
        m = _FUSED_KEY.match(key)
        if m is None or m["mod"] not in fused:
            continue
        kept = hasattr(tensor, "to_kernel")  # GGUF blocks: each row is one output feature
        arr = tensor.blocks if kept else np.asarray(tensor)
        parts = fused[m["mod"]]
        widths = [shapes[(f"layers_{m['idx']}", *p.split("."), "kernel")][1] for p in parts]
        if arr.shape[0] != sum(widths):
            raise DataError(
                f"tensor {key!r} has {arr.shape[0]} rows but the config implies {sum(widths)} "
                f"({' + '.join(map(str, widths))} for {', '.join(parts)}); check that the "
                "checkpoint matches its config.json"
            )
        start = 0
        for part, w in zip(parts, widths):
            rows = arr[start : start + w]
            if kept:  # whole rows of blocks: the split stays packed
                rows = dataclasses.replace(
                    tensor, blocks=np.ascontiguousarray(rows), shape=(w, tensor.shape[1])
                )
            out[f"{m['pre']}{part}.weight"] = rows
            start += w
        del out[key]
    return out


def fuse(state: dict[str, np.ndarray], cfg: ModelConfig) -> dict[str, np.ndarray]:
    """The inverse of :func:`unfuse` on an HF-named state dict (Phi-3 exports)."""
    fused = fused_modules(cfg)
    if not fused:
        return state
    out = dict(state)
    for i in range(cfg.num_layers):
        for whole, parts in fused.items():
            names = [f"model.layers.{i}.{p}.weight" for p in parts]
            if all(n in out for n in names):
                out[f"model.layers.{i}.{whole}.weight"] = np.concatenate(
                    [out.pop(n) for n in names]
                )
    return out


def params_from_hf(
    state_dict: dict[str, np.ndarray], cfg: ModelConfig, param_dtype: Any = jnp.float32
) -> dict:
    """HF-named numpy state dict (transformers' layout) -> our params pytree in ``param_dtype``.

    Raises ValueError naming the tensor when one is missing or its shape disagrees with cfg.
    """
    dtype = as_dtype(param_dtype)
    state_dict = unfuse(state_dict, cfg)
    flat, used = {}, set()
    for path, shape in param_shapes(cfg).items():
        name, transposed = hf_name(path, cfg)
        tensor = _lookup(state_dict, name)
        if tensor is None:
            raise DataError(
                f"tensor {name!r} is missing from the checkpoint (needed for "
                f"{'/'.join(path)} of a {cfg.model_type} model); check that the checkpoint "
                "matches its config.json"
            )
        used.add(name if name in state_dict else name.split(".", 1)[1])
        expected = tuple(reversed(shape)) if transposed else tuple(shape)
        if tuple(tensor.shape) != expected:
            raise DataError(
                f"tensor {name!r} has shape {tuple(tensor.shape)} but the config implies "
                f"{expected}; check that the checkpoint matches its config.json"
            )
        if hasattr(tensor, "to_kernel"):  # GGUF blocks kept packed (lora_jax.quant, quant=keep)
            flat[path] = tensor.to_kernel()
            continue
        arr = np.asarray(tensor)
        flat[path] = jnp.asarray(arr.T if transposed else arr, dtype=dtype)
    extra = [k for k in state_dict if k not in used and not _BUFFERS.search(k)]
    extra = [k for k in extra if not (k == "lm_head.weight" and cfg.tie_word_embeddings)]
    if extra:
        log.warning(
            "ignoring %d checkpoint tensors the model does not use: %s", len(extra), extra[:8]
        )
    return traverse_util.unflatten_dict(flat)


def params_to_hf(params: dict, cfg: ModelConfig) -> dict[str, np.ndarray]:
    """Our params pytree -> HF-named numpy state dict (as transformers' ``save_pretrained``
    writes it; a tied LM head is not written)."""
    out = {}
    for path, value in traverse_util.flatten_dict(params).items():
        name, transposed = hf_name(path, cfg)
        arr = np.asarray(value)
        out[name] = np.ascontiguousarray(arr.T) if transposed else arr
    return fuse(out, cfg)
