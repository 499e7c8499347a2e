"""The merged model (W + s·A·B) as a Hugging Face folder transformers loads with
``AutoModelForCausalLM.from_pretrained``: ``config.json``, ``model.safetensors`` with
transformers' tensor names and layouts (:func:`lora_jax.models.convert.params_to_hf`, the
inverse of the loading map) and the tokenizer files when the source has them."""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from lora_jax.lora.params import merge
from lora_jax.models.config import ModelConfig
from lora_jax.models.convert import params_to_hf
from lora_jax.models.registry import lora_modules

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.json",
    "merges.txt",
    "tokenizer.model",
    "chat_template.jinja",
)
_ARCH = {"gpt2": "GPT2LMHeadModel", "llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM",
         "qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM", "gemma2": "Gemma2ForCausalLM",
         "gemma3_text": "Gemma3ForCausalLM", "phi3": "Phi3ForCausalLM"}  # fmt: skip


def save_merged_hf(
    params: Mapping[str, Any],
    lora: Mapping[str, Any] | None,
    cfg: ModelConfig,
    hf_config: Mapping[str, Any],
    out_dir: str | Path,
    source: str | None = None,
) -> Path:
    """Merge ``lora`` into ``params`` (float32) and write a transformers folder to ``out_dir``.

    ``hf_config``: the transformers config dict the base was loaded with (``load_checkpoint``).
    ``source``: the base checkpoint; tokenizer files are copied from a folder, or written by
    transformers from a ``.gguf`` (when transformers is installed).
    """
    from safetensors.numpy import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    merged = merge(params, lora, lora_modules(cfg)) if lora else params
    state = {k: np.asarray(v, np.float32) for k, v in params_to_hf(merged, cfg).items()}
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    config = dict(hf_config)
    config.setdefault("architectures", [_ARCH.get(config.get("model_type"), "AutoModel")])
    config["torch_dtype"] = "float32"
    config.pop("dtype", None)
    (out / "config.json").write_text(json.dumps(config, indent=2, default=_jsonable) + "\n")
    if source:
        _tokenizer_files(Path(source), out)
    return out


def _jsonable(x: Any) -> Any:
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    raise TypeError(f"{type(x).__name__} is not JSON serializable")


def _tokenizer_files(src: Path, out: Path) -> None:
    if src.is_dir():
        for name in TOKENIZER_FILES:
            if (src / name).is_file():
                shutil.copy2(src / name, out / name)
    elif src.suffix == ".gguf":
        try:
            from transformers import AutoTokenizer
        except ImportError:  # the weights and config are complete without it
            return
        AutoTokenizer.from_pretrained(src.parent, gguf_file=src.name).save_pretrained(out)
