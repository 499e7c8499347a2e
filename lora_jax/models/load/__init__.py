"""Checkpoint loading: one entry point for local folders, GGUF files and Hub ids.

    hf_config, state, tokenizer = load_checkpoint("HuggingFaceTB/SmolLM2-135M-Instruct")

``state`` maps transformers' *ForCausalLM / LMHeadModel state-dict names (e.g.
``model.layers.0.self_attn.q_proj.weight``, ``transformer.h.0.attn.c_attn.weight``) to numpy
arrays in transformers' layout (Linear ``[out, in]``, GPT-2 Conv1D ``[in, out]``). A tied head is
absent (``hf_config["tie_word_embeddings"]``, always true for GPT-2). Safetensors keep their file
dtype (bfloat16 as ``ml_dtypes.bfloat16``); GGUF tensors are dequantized to float32.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from lora_jax.errors import ConfigError, MissingFile
from lora_jax.models.load.gguf_file import load_gguf
from lora_jax.models.load.hub import LOCAL_FILE_ENV, download, looks_like_repo_id
from lora_jax.models.load.safetensors_dir import (
    PICKLE_SUFFIXES,
    load_safetensors_dir,
    pickle_refusal,
)
from lora_jax.models.tokenizer import Tokenizer

__all__ = ["load_checkpoint", "load_gguf", "load_safetensors_dir"]


def load_checkpoint(
    source: str | Path, revision: str | None = None, keep_quantized: bool = False
) -> tuple[dict[str, Any], dict[str, np.ndarray], Tokenizer | None]:
    """``(hf_config, state, tokenizer)`` from a folder, a ``.gguf`` path or a Hub id "org/name".

    The tokenizer is None only for a folder that has no tokenizer files. ``keep_quantized``
    (GGUF only) keeps the block Linear weights packed (``model.quant=keep``).
    """
    src = str(source)
    if not src.strip():  # Path("") is ".": never load the current directory by accident
        raise ConfigError(_empty_source_message())
    path = Path(src).expanduser()
    if path.suffix in PICKLE_SUFFIXES:
        raise pickle_refusal(path)
    if keep_quantized and path.suffix != ".gguf":
        raise ConfigError(
            f"model.quant=keep keeps a GGUF file's quantized blocks, but {src!r} is not a .gguf "
            "file; use model.quant=nf4 or int8 to quantize other checkpoints at load"
        )
    if path.suffix == ".gguf":
        config, state, meta = load_gguf(path, keep_quantized)
        return config, state, Tokenizer.from_gguf_metadata(meta)
    if path.is_dir():
        return _from_folder(path)
    if path.exists():
        raise ConfigError(
            f"{path} is a file lora-jax cannot load; pass a save_pretrained folder "
            "(config.json + safetensors), a .gguf file, or a Hub id 'org/name'"
        )
    if looks_like_repo_id(src):
        return _from_folder(download(src, revision))
    raise MissingFile(f"{src!r} is neither an existing path nor a Hub id 'org/name'")


def _empty_source_message() -> str:
    envs = "; ".join(
        f"{env} (set it to /path/to.gguf, or unset it to load {hub_id} from the Hub)"
        for hub_id, env in LOCAL_FILE_ENV.items()
    )
    return (
        "model.source is empty: give a save_pretrained folder, a .gguf file or a Hub id "
        f"'org/name' (model.source=...). An empty environment variable gives this too: {envs}"
    )


def _from_folder(folder: Path) -> tuple[dict[str, Any], dict[str, np.ndarray], Tokenizer | None]:
    config, state = load_safetensors_dir(folder)
    has_tok = (folder / "tokenizer.json").is_file() or (folder / "vocab.json").is_file()
    return config, state, Tokenizer.from_folder(folder, config) if has_tok else None
