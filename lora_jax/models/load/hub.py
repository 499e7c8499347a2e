"""Fetch a Hugging Face Hub model repo ("org/name") into the local HF cache.

Only config, safetensors and tokenizer files are downloaded (never pickles, never remote code).
``HF_HUB_OFFLINE=1`` (or ``offline=True``) reads the cache only; ``HF_HUB_CACHE`` / ``HF_HOME``
choose the cache as usual for huggingface_hub.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from lora_jax.errors import MissingFile

ALLOW_PATTERNS = [
    "config.json",
    "generation_config.json",
    "*.safetensors",
    "model.safetensors.index.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "chat_template.json",
    "vocab.json",
    "merges.txt",
]

_REPO_ID = re.compile(r"^[\w.-]+(/[\w.-]+)?$")

# Hub ids whose config (conf/model/*.yaml) reads a local file from an environment variable
# first, e.g. ``source: ${oc.env:LORA_JAX_SMOLLM2_GGUF,HuggingFaceTB/SmolLM2-135M-Instruct}``:
# an error that cannot fetch one names that variable as the way to point the run at a file.
LOCAL_FILE_ENV = {
    "HuggingFaceTB/SmolLM2-135M-Instruct": "LORA_JAX_SMOLLM2_GGUF",
    "google/gemma-3-270m": "LORA_JAX_GEMMA3_GGUF",
}


def local_hint(repo_id: str) -> str:
    """How to load a local checkpoint instead of ``repo_id`` (the end of a sentence, for errors)."""
    env = LOCAL_FILE_ENV.get(repo_id)
    via_env = f"{env}=/path/to.gguf or " if env else ""
    return f"use a local checkpoint instead: set {via_env}model.source=/path/to/folder-or-file.gguf"


def looks_like_repo_id(source: str) -> bool:
    """True for "org/name" or "name" that is not an existing local path."""
    return bool(_REPO_ID.match(source)) and not Path(source).exists()


def _offline_env() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def download(repo_id: str, revision: str | None = None, offline: bool | None = None) -> Path:
    """Local snapshot folder of ``repo_id`` at ``revision`` (branch, tag or commit)."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    offline = _offline_env() if offline is None else offline
    try:
        path = snapshot_download(
            repo_id,
            revision=revision,
            allow_patterns=ALLOW_PATTERNS,
            local_files_only=offline,
        )
    except LocalEntryNotFoundError as e:
        rev = f" at revision {revision!r}" if revision else ""
        if offline:
            raise MissingFile(
                f"{repo_id!r}{rev} is not in the local Hugging Face cache and HF_HUB_OFFLINE is set. "
                "Download it once while online (unset HF_HUB_OFFLINE), point HF_HUB_CACHE at a "
                f"cache that has it, or {local_hint(repo_id)}."
            ) from e
        why = " ".join(str(e).split()).rstrip(".")  # one line: huggingface_hub's has several
        raise MissingFile(
            f"could not fetch {repo_id!r}{rev} from the Hugging Face Hub and it is not cached "
            f"({why}). Check the network, or {local_hint(repo_id)}."
        ) from e
    return Path(path)
