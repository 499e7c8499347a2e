"""Examples -> token ids with a loss mask on the target only.

"plain" (base LMs, the LoRA repo's E2E format, examples/NLG/src/format_converting_e2e.py +
data_utils.py): ids = [BOS]? + tok(prompt(source)) + [EOS] + tok(" " + target) + [EOS];
the loss covers the completion tok(" " + target) + [EOS]. [BOS] is there when the tokenizer
adds one to a sequence (``tok.add_bos``, from its own metadata: Llama-family tokenizers do;
GPT-2's does not, and the paper's GPT-2 format has none), unless ``add_bos`` overrides it
(``task.add_bos``: null = follow the tokenizer). Training and decoding build the prefix with
the same function, so both get the same BOS.

"chat" (instruct models): the tokenizer's chat template renders a user message
(instruction + "\\n\\n" + prompt(source)) and an assistant message (target); the prefix is
the template with add_generation_prompt=True, and the loss covers everything after it (the
answer and the template's end-of-turn), plus a final EOS if the template did not emit one.

The chat format never adds one: chat templates write their own BOS text when the model wants
it (transformers' apply_chat_template tokenizes without special tokens too).

Tokenizer object used (lora_jax.models.tokenizer.Tokenizer): encode(text,
add_special_tokens=False), eos_id, bos_id, add_bos, apply_chat_template(messages,
add_generation_prompt), has_chat_template.
"""

from __future__ import annotations

from typing import Any

from lora_jax.errors import ConfigError, DataError
from lora_jax.tasks.base import Example

FORMATS = ("plain", "chat")


def _check_fmt(tok: Any, fmt: str) -> None:
    if fmt not in FORMATS:
        raise ConfigError(f"format must be one of {FORMATS}, got {fmt!r}")
    if tok.eos_id is None:
        raise ConfigError("the tokenizer has no EOS token id; the formats end each part with EOS")
    if fmt == "chat" and not tok.has_chat_template:
        raise ConfigError(
            "format='chat' needs a tokenizer with a chat template (instruct model); "
            "use format='plain' for base models"
        )


def _user_message(source: str, task: Any | None) -> str:
    prompt = task.prompt(source) if task is not None else source
    instruction = getattr(task, "instruction", "") if task is not None else ""
    return f"{instruction}\n\n{prompt}" if instruction else prompt


def wants_bos(tok: Any, add_bos: bool | None = None) -> bool:
    """Whether the plain format starts with BOS: ``add_bos`` if given, else the tokenizer's
    own behaviour (``tok.add_bos``)."""
    if add_bos is None:
        add_bos = bool(getattr(tok, "add_bos", False))
    if add_bos and tok.bos_id is None:
        raise ConfigError("task.add_bos=true but the tokenizer has no BOS token; set it to null")
    return add_bos


def encode_prompt(
    tok: Any,
    source: str,
    fmt: str = "plain",
    task: Any | None = None,
    add_bos: bool | None = None,
) -> list[int]:
    """Prefix ids given at decode time; identical to the training prefix of the same source.
    add_bos: None follows the tokenizer (module docstring); True/False override."""
    _check_fmt(tok, fmt)
    if fmt == "plain":
        prompt = task.prompt(source) if task is not None else source
        bos = [tok.bos_id] if wants_bos(tok, add_bos) else []
        return bos + tok.encode(prompt, add_special_tokens=False) + [tok.eos_id]
    messages = [{"role": "user", "content": _user_message(source, task)}]
    text = tok.apply_chat_template(messages, add_generation_prompt=True)
    return tok.encode(text, add_special_tokens=False)


def _completion_ids(tok: Any, ex: Example, fmt: str, task: Any | None) -> list[int]:
    if fmt == "plain":
        return tok.encode(" " + ex.target, add_special_tokens=False) + [tok.eos_id]
    user = {"role": "user", "content": _user_message(ex.source, task)}
    prefix = tok.apply_chat_template([user], add_generation_prompt=True)
    full = tok.apply_chat_template(
        [user, {"role": "assistant", "content": ex.target}], add_generation_prompt=False
    )
    if not full.startswith(prefix):
        raise DataError(
            "the chat template's rendering with the answer does not start with its "
            "generation prompt; cannot separate prompt from target for the loss mask"
        )
    ids = tok.encode(full[len(prefix) :], add_special_tokens=False)
    return ids if tok.eos_id in ids else ids + [tok.eos_id]


def encode_example(
    tok: Any,
    ex: Example,
    fmt: str = "plain",
    max_len: int = 512,
    task: Any | None = None,
    add_bos: bool | None = None,
) -> dict[str, list[int]]:
    """{input_ids: [T], loss_mask: [T]} with T <= max_len; loss_mask 1 on target tokens only.

    Too long: the prompt is cut from the left first (keeping its end, next to the target);
    if the completion alone exceeds max_len it is cut from the right.
    """
    if max_len < 2:
        raise ConfigError(f"max_len must be >= 2, got {max_len}")
    prefix = encode_prompt(tok, ex.source, fmt, task, add_bos)
    completion = _completion_ids(tok, ex, fmt, task)
    overflow = len(prefix) + len(completion) - max_len
    if overflow > 0:
        prefix = prefix[min(overflow, len(prefix)) :]
        completion = completion[: max_len - len(prefix)]
    return {
        "input_ids": prefix + completion,
        "loss_mask": [0] * len(prefix) + [1] * len(completion),
    }
