"""Read a transformers checkpoint folder (``config.json`` + safetensors, single file or shards)
into an HF-named numpy state dict, in transformers' own tensor layout.

Layouts kept as the file stores them: ``nn.Linear`` weights are ``[out, in]``; GPT-2's
``Conv1D`` weights are ``[in, out]``. Tied heads are not materialised: when the file has no
``lm_head.weight`` the config's ``tie_word_embeddings`` (GPT-2: always) says to reuse the
embedding. Pickle formats (``.bin``, ``.pt``, ``.pth``, ``.ckpt``) are refused, never unpickled.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import ml_dtypes  # noqa: F401  (registers bfloat16/float8 with numpy for safetensors)
import numpy as np
from safetensors import SafetensorError, safe_open

from lora_jax.errors import ConfigError, DataError, MissingFile

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")

# Buffers some checkpoints carry that transformers' current state_dict does not have:
# GPT-2's causal-mask buffers ("h.0.attn.bias" [1, 1, n_ctx, n_ctx], "h.0.attn.masked_bias")
# and old Llama saves' "rotary_emb.inv_freq".
_DROP = re.compile(r"(\.attn\.bias|\.attn\.masked_bias|\.rotary_emb\.inv_freq)$")
# GPT2Model checkpoints (e.g. the hub's "gpt2") have bare keys: "h.0...", "wte.weight", ...
_GPT2_BARE = re.compile(r"^(h\.\d+\.|wte\.|wpe\.|ln_f\.)")


def pickle_refusal(path: Path) -> ConfigError:
    """The error for a pickle checkpoint: we never unpickle (arbitrary code execution)."""
    return ConfigError(
        f"{path} is a pickle checkpoint ({path.suffix}); lora-jax only reads safetensors and GGUF "
        "and never unpickles. Convert it once with transformers: "
        "`AutoModelForCausalLM.from_pretrained(src).save_pretrained(dst, safe_serialization=True)` "
        "and load `dst`."
    )


def read_config(folder: Path) -> dict[str, Any]:
    """``config.json`` as a dict; clear error when it is missing."""
    path = folder / "config.json"
    if not path.is_file():
        raise MissingFile(
            f"{folder} has no config.json; a checkpoint folder needs config.json plus "
            f"{SINGLE_FILE} (or {INDEX_FILE} and its shards), as written by transformers' "
            "save_pretrained"
        )
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        where = f", line {e.lineno}, column {e.colno}" if hasattr(e, "lineno") else ""
        raise DataError(
            f"{path}{where}: not valid JSON ({e}); restore the file written by save_pretrained "
            "(or download the checkpoint again)"
        ) from e


def _read_file(path: Path, names: list[str] | None = None) -> dict[str, np.ndarray]:
    try:
        return _read_tensors(path, names)
    except SafetensorError as e:
        raise DataError(
            f"{path}: not a readable safetensors file ({e}); it is truncated or corrupt: "
            "download or save it again"
        ) from e


def _read_tensors(path: Path, names: list[str] | None) -> dict[str, np.ndarray]:
    with safe_open(str(path), framework="numpy") as f:
        keys = list(f.keys()) if names is None else names
        have = set(f.keys())
        missing = [k for k in keys if k not in have]
        if missing:
            raise DataError(
                f"shard {path.name} lacks tensor(s) {missing[:5]} that {INDEX_FILE} places there; "
                "the checkpoint is partial or corrupt: download it again"
            )
        return {k: f.get_tensor(k) for k in keys}


def _read_sharded(folder: Path) -> dict[str, np.ndarray]:
    try:
        index = json.loads((folder / INDEX_FILE).read_text())
    except ValueError as e:
        raise DataError(
            f"{folder / INDEX_FILE}: not valid JSON ({e}); download the checkpoint again"
        ) from e
    weight_map: dict[str, str] = index.get("weight_map") or {}
    if not weight_map:
        raise DataError(f"{folder / INDEX_FILE} has an empty weight_map")
    by_shard: dict[str, list[str]] = {}
    for name, shard in weight_map.items():
        by_shard.setdefault(shard, []).append(name)
    missing = sorted(s for s in by_shard if not (folder / s).is_file())
    if missing:
        raise MissingFile(
            f"{folder} is missing shard file(s) {missing} listed in {INDEX_FILE} "
            f"(they hold e.g. {by_shard[missing[0]][0]!r}); download the checkpoint again"
        )
    state: dict[str, np.ndarray] = {}
    for shard, names in by_shard.items():
        state.update(_read_file(folder / shard, names))
    return state


def normalize_keys(state: dict[str, np.ndarray], model_type: str | None) -> dict[str, np.ndarray]:
    """Drop non-parameter buffers; prefix bare GPT2Model keys with ``transformer.``."""
    out = {}
    for k, v in state.items():
        if _DROP.search(k):
            continue
        if model_type == "gpt2" and _GPT2_BARE.match(k):
            k = "transformer." + k
        out[k] = v
    return out


def load_safetensors_dir(folder: str | Path) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """``(hf_config, state)`` from a save_pretrained folder; tensors keep their file dtype."""
    folder = Path(folder)
    if not folder.is_dir():
        raise MissingFile(f"{folder} is not a directory")
    config = read_config(folder)
    if (folder / INDEX_FILE).is_file():
        state = _read_sharded(folder)
    elif (folder / SINGLE_FILE).is_file():
        state = _read_file(folder / SINGLE_FILE)
    else:
        others = sorted(p.name for p in folder.glob("*.safetensors"))
        pickles = sorted(p for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES)
        if pickles:
            raise pickle_refusal(pickles[0])
        if len(others) == 1:  # a lone, differently named safetensors file
            state = _read_file(folder / others[0])
        else:
            raise MissingFile(
                f"{folder} has neither {SINGLE_FILE} nor {INDEX_FILE}"
                + (f" (found {others}: add the index file)" if others else "")
                + ". A Hub repo with only pytorch_model.bin has no safetensors to fetch: convert it "
                "with transformers' save_pretrained(dst, safe_serialization=True) and load dst"
            )
    return config, normalize_keys(state, config.get("model_type"))
