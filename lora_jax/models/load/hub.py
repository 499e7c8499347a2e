"""Fetch a Hugging Face Hub model repo ("org/name") into the local HF cache.

Only config, safetensors and tokenizer files are downloaded (never pickles, never remote code).
``HF_HUB_OFFLINE=1`` (or ``offline=True``) reads the cache only; ``HF_HUB_CACHE`` / ``HF_HOME``
choose the cache as usual for huggingface_hub.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

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
            raise FileNotFoundError(
                f"{repo_id!r}{rev} is not in the local Hugging Face cache and HF_HUB_OFFLINE is set. "
                "Download it once while online (unset HF_HUB_OFFLINE), point HF_HUB_CACHE at a "
                "cache that has it, or pass a local folder / .gguf path instead."
            ) from e
        raise FileNotFoundError(
            f"could not fetch {repo_id!r}{rev} from the Hugging Face Hub and it is not cached: "
            f"{e}. Check the network, or pass a local folder / .gguf path instead."
        ) from e
    return Path(path)
