"""A small tokenizer wrapper over HF ``tokenizers``: built from a save_pretrained folder or from
a GGUF file's metadata, with special-token ids and the model's jinja2 chat template.

GGUF tokenizers are rebuilt the way transformers does it (``integrations/gguf/
gguf_tokenizer_mapping.py``; the backends are :mod:`lora_jax.models.tokenizer_gguf`): byte-level
or sentencepiece BPE, control tokens (type 3) added as special tokens, user-defined tokens
(type 4) as plain added tokens.

``add_bos``: whether the tokenizer puts BOS before a sequence (what transformers'
``encode(text, add_special_tokens=True)`` does), read from the tokenizer's own metadata:
``add_bos_token`` in tokenizer_config.json when present, else its tokenizer.json
post-processor; GGUF ``tokenizer.ggml.add_bos_token``. Llama/TinyLlama/Llama 3 tokenizers add
one; GPT-2's and SmolLM2's do not.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from tokenizers import AddedToken, decoders, models, pre_tokenizers, processors
from tokenizers import Tokenizer as Backend

from lora_jax.errors import ConfigError, DataError, MissingFile
from lora_jax.models.tokenizer_gguf import (
    byte_level_backend,
    sentencepiece_backend,
)

_CONTROL, _USER_DEFINED = 3, 4  # llama.cpp token types


def _token_text(tok: Any) -> str | None:
    if isinstance(tok, dict):
        return tok.get("content")
    return tok


class Tokenizer:
    """``encode`` / ``decode`` / special ids / ``apply_chat_template`` over a ``tokenizers`` backend."""

    def __init__(
        self,
        backend: Backend,
        *,
        eos_id: int,
        bos_id: int | None = None,
        pad_id: int | None = None,
        chat_template: str | None = None,
        special_tokens: dict[str, str] | None = None,
        add_bos: bool = False,
    ) -> None:
        self.backend = backend
        self.add_bos = bool(add_bos) and bos_id is not None
        self.eos_id = int(eos_id)
        self.bos_id = None if bos_id is None else int(bos_id)
        self.pad_id = self.eos_id if pad_id is None else int(pad_id)
        self.chat_template = chat_template
        self.special_tokens = dict(special_tokens or {})

    # ---- core API
    @property
    def vocab_size(self) -> int:
        """Vocabulary size including added tokens."""
        return self.backend.get_vocab_size(with_added_tokens=True)

    @property
    def has_chat_template(self) -> bool:
        return bool(self.chat_template)

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        """Token ids of ``text``; ``add_special_tokens`` applies the post-processor (e.g. BOS)."""
        return self.backend.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        return self.backend.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

    def token_to_id(self, token: str) -> int | None:
        return self.backend.token_to_id(token)

    def apply_chat_template(
        self, messages: list[dict[str, Any]], add_generation_prompt: bool = False, **kwargs: Any
    ) -> str:
        """Render ``messages`` ([{"role", "content"}, ...]) with the model's jinja2 template, in the
        same sandboxed environment transformers uses (trim_blocks, lstrip_blocks)."""
        if not self.chat_template:
            raise ConfigError(
                "this tokenizer has no chat template (none in tokenizer_config.json / "
                "chat_template.jinja or GGUF tokenizer.chat_template); format prompts yourself "
                "or use an instruct model that ships one"
            )
        template = _compile(self.chat_template)
        return template.render(
            messages=messages,
            add_generation_prompt=add_generation_prompt,
            **{**self.special_tokens, **kwargs},
        )

    # ---- constructors
    @classmethod
    def from_folder(cls, path: str | Path, hf_config: dict[str, Any] | None = None) -> Tokenizer:
        """From a save_pretrained folder: ``tokenizer.json`` (or GPT-2's vocab.json + merges.txt)
        with ``tokenizer_config.json`` / ``special_tokens_map.json`` / ``chat_template.jinja``."""
        path = Path(path)
        if (path / "tokenizer.json").is_file():
            backend = Backend.from_file(str(path / "tokenizer.json"))
        elif (path / "vocab.json").is_file() and (path / "merges.txt").is_file():
            backend = _byte_level_from_files(path)
        else:
            raise MissingFile(
                f"{path} has no tokenizer.json (nor vocab.json + merges.txt); save the tokenizer "
                "with transformers' `tokenizer.save_pretrained(folder)`"
            )
        cfg = _read_json(path / "tokenizer_config.json")
        special = {**_read_json(path / "special_tokens_map.json"), **cfg}
        if hf_config is None:
            hf_config = _read_json(path / "config.json")
        names = {}
        for name in ("bos_token", "eos_token", "pad_token", "unk_token"):
            text = _token_text(special.get(name))
            if text is not None:
                names[name] = text

        def pick(name: str, config_key: str) -> int | None:
            if name in names and backend.token_to_id(names[name]) is not None:
                return backend.token_to_id(names[name])
            value = hf_config.get(config_key)
            if isinstance(value, list):
                value = value[0] if value else None
            return value

        eos = pick("eos_token", "eos_token_id")
        if eos is None:
            raise DataError(
                f"{path}: cannot tell the end-of-sequence token: neither tokenizer_config.json "
                "eos_token nor config.json eos_token_id is set; add one of them"
            )
        bos = pick("bos_token", "bos_token_id")
        for name, key in (("eos_token", eos), ("bos_token", bos)):
            if name not in names and key is not None:
                names[name] = backend.id_to_token(key)
        if "add_bos_token" in cfg:  # transformers rebuilds the post-processor from this flag
            add_bos = bool(cfg["add_bos_token"])
        else:  # what the post-processor does to a sequence
            add_bos = bos is not None and backend.encode("a", add_special_tokens=True).ids[:1] == [
                bos
            ]
        return cls(
            backend,
            eos_id=eos,
            bos_id=bos,
            pad_id=pick("pad_token", "pad_token_id"),
            chat_template=_chat_template_of(path, cfg),
            special_tokens=names,
            add_bos=add_bos,
        )

    @classmethod
    def from_gguf(cls, path: str | Path) -> Tokenizer:
        """From a GGUF file's ``tokenizer.*`` metadata."""
        from gguf import GGUFReader

        from lora_jax.models.load.gguf_file import read_metadata

        return cls.from_gguf_metadata(read_metadata(GGUFReader(str(path))))

    @classmethod
    def from_gguf_metadata(cls, meta: dict[str, Any]) -> Tokenizer:
        """From GGUF metadata already read (``gguf_file.read_metadata``)."""
        kind = meta.get("tokenizer.ggml.model")
        tokens: list[str] = list(meta["tokenizer.ggml.tokens"])
        types = list(meta.get("tokenizer.ggml.token_type") or [])
        if kind == "gpt2":
            backend, vocab, alphabet = byte_level_backend(meta, tokens)
        elif kind == "llama":
            backend, vocab = sentencepiece_backend(meta, tokens)
            alphabet = None
        else:
            raise NotImplementedError(
                f"GGUF tokenizer type {kind!r} is not supported (byte-level BPE 'gpt2': Llama 3, "
                "SmolLM, Qwen2, GPT-2; sentencepiece 'llama': Llama 2, Gemma, Phi-3); load the "
                "model's HF folder for its tokenizer.json"
            )
        control = [
            AddedToken(t, normalized=False, special=True)
            for t, ty in zip(tokens, types)
            if ty == _CONTROL and (alphabet is None or set(t) <= alphabet)
        ]
        backend.add_special_tokens(control)
        user = [
            AddedToken(t, normalized=False, special=False)
            for t, ty in zip(tokens, types)
            if ty == _USER_DEFINED and t in vocab
        ]
        if user:
            backend.add_tokens(user)

        def ident(key: str) -> int | None:
            v = meta.get(f"tokenizer.ggml.{key}")
            return None if v is None else int(v)

        bos, eos, pad = ident("bos_token_id"), ident("eos_token_id"), ident("padding_token_id")
        if eos is None:
            raise DataError("GGUF metadata lacks tokenizer.ggml.eos_token_id")
        add_bos = meta.get("tokenizer.ggml.add_bos_token")
        if add_bos is None and kind == "llama":  # transformers: sentencepiece files default to BOS
            add_bos = True
        template = []
        if add_bos and bos is not None:
            template.append((tokens[bos], bos))
        single = " ".join([t for t, _ in template] + ["$A"])
        if meta.get("tokenizer.ggml.add_eos_token"):
            template.append((tokens[eos], eos))
            single += f" {tokens[eos]}"
        if template:
            backend.post_processor = processors.TemplateProcessing(
                single=single, special_tokens=sorted(set(template))
            )
        names = {"eos_token": tokens[eos]}
        if bos is not None:
            names["bos_token"] = tokens[bos]
        if pad is not None:
            names["pad_token"] = tokens[pad]
        return cls(
            backend,
            eos_id=eos,
            bos_id=bos,
            pad_id=pad,
            chat_template=meta.get("tokenizer.chat_template"),
            special_tokens=names,
            add_bos=bool(add_bos),
        )


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.is_file() else {}


def _chat_template_of(path: Path, cfg: dict[str, Any]) -> str | None:
    """transformers >= 4.43 may write chat_template.jinja / chat_template.json instead of the key."""
    if (path / "chat_template.jinja").is_file():
        return (path / "chat_template.jinja").read_text()
    tpl = cfg.get("chat_template") or _read_json(path / "chat_template.json").get("chat_template")
    if isinstance(tpl, list):  # named templates: [{"name": "default", "template": ...}, ...]
        named = {t["name"]: t["template"] for t in tpl}
        tpl = named.get("default") or next(iter(named.values()), None)
    return tpl


def _byte_level_from_files(path: Path) -> Backend:
    vocab = json.loads((path / "vocab.json").read_text())
    lines = (path / "merges.txt").read_text(encoding="utf-8").splitlines()
    merges = [tuple(line.split(" ")) for line in lines if line and not line.startswith("#version")]
    backend = Backend(models.BPE(vocab=vocab, merges=merges, fuse_unk=False))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    if "<|endoftext|>" in vocab:
        backend.add_special_tokens([AddedToken("<|endoftext|>", normalized=False, special=True)])
    return backend


def _compile(template: str) -> Any:
    """Compile like transformers' ``_compile_jinja_template`` (sandboxed, same filters/globals)."""
    import jinja2
    import jinja2.ext
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str) -> None:
        raise jinja2.exceptions.TemplateError(message)

    def tojson(
        x: Any,
        ensure_ascii: bool = False,
        indent: Any = None,
        separators: Any = None,
        sort_keys: bool = False,
    ) -> str:
        return json.dumps(
            x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
        )

    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols]
    )
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env.from_string(template)
