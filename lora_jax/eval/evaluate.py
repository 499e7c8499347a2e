"""Task evaluation: decode one hypothesis per distinct source with the KV cache, then score
with the task's metrics.

``task.decode.merged``: decode on merged weights ``W + s·BA`` (:func:`lora_jax.lora.merge`),
so decoding costs what the base model costs (no LoRA branch per target per token). Merging
changes the rounding (one fp32 kernel instead of ``x·W + s·(x·A)·B``): at fp32 that is
reassociation-level (~1e-7 relative) and decodes the same tokens (tests/test_decode_options.py);
into a bf16/fp16 kernel it would round ``s·BA`` to the kernel's 8 bits, where small adapter
updates vanish. So the default (null) merges when the frozen base is float32 and decodes
unmerged otherwise; true/false force it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from lora_jax.eval.decoding import generate
from lora_jax.lora import merge
from lora_jax.tasks.base import EvalItem
from lora_jax.tasks.formatting import encode_prompt


def decode_items(
    module: Any,
    variables: Mapping[str, Any],
    model_cfg: Any,
    tokenizer: Any,
    task: Any,
    items: Sequence[EvalItem],
    fmt: str,
    decode_cfg: Mapping[str, Any],
    max_len: int,
    add_bos: bool | None = None,
) -> list[str]:
    """Generated text per item (post-processed by the task). add_bos: as in training
    (:func:`lora_jax.tasks.formatting.encode_prompt`; None follows the tokenizer)."""
    variables = decode_variables(variables, model_cfg, decode_cfg.get("merged"))
    prompts, kw = decode_request(
        model_cfg, tokenizer, task, items, fmt, decode_cfg, max_len, add_bos
    )
    out = generate(module, variables, prompts, **kw)
    return [task.postprocess(tokenizer.decode(ids, skip_special_tokens=True)) for ids in out]


def decode_request(
    model_cfg: Any,
    tokenizer: Any,
    task: Any,
    items: Sequence[EvalItem],
    fmt: str,
    decode_cfg: Mapping[str, Any],
    max_len: int,
    add_bos: bool | None = None,
) -> tuple[list[list[int]], dict[str, Any]]:
    """The prompts (encoded as in training) and the decoder's keyword arguments (EOS ids of the
    model and the tokenizer, limits from ``decode_cfg``): one source for single- and
    multi-adapter decoding."""
    prompts = [encode_prompt(tokenizer, it.source, fmt, task, add_bos) for it in items]
    eos = model_cfg.eos_token_id if model_cfg.eos_token_id is not None else tokenizer.eos_id
    eos_ids = sorted({tokenizer.eos_id, *(eos if isinstance(eos, list) else [eos])})
    max_new = int(decode_cfg["max_new_tokens"])
    return prompts, dict(
        cfg=model_cfg, eos_token_id=eos_ids, pad_token_id=tokenizer.pad_id,
        max_new_tokens=max_new, num_beams=int(decode_cfg["num_beams"]),
        length_penalty=float(decode_cfg["length_penalty"]),
        no_repeat_ngram_size=int(decode_cfg["no_repeat_ngram_size"]),
        batch_size=int(decode_cfg["batch_size"]), max_prompt_len=max(max_len - max_new, 8),
    )  # fmt: skip


def decode_variables(
    variables: Mapping[str, Any], model_cfg: Any, merged: bool | None = None
) -> Mapping[str, Any]:
    """The variables to decode with: ``{"params": W + s·BA}`` when merging (``merged`` true, or
    None and every float leaf of the base is float32), else ``variables`` unchanged."""
    lora = variables.get("lora")
    if not lora:
        return variables
    if merged is None:
        floats = [
            x for x in jax.tree.leaves(variables["params"]) if jnp.issubdtype(x.dtype, jnp.floating)
        ]
        merged = all(x.dtype == jnp.float32 for x in floats)
    if not merged:
        return variables
    from lora_jax.models.registry import lora_modules

    return {"params": merge(variables["params"], lora, lora_modules(model_cfg))}


def evaluate(
    module, variables, model_cfg, tokenizer, task, items, fmt, decode_cfg, max_len, add_bos=None
):
    """-> (metrics dict, hypotheses)."""
    hyps = decode_items(
        module, variables, model_cfg, tokenizer, task, items, fmt, decode_cfg, max_len, add_bos
    )
    return task.score(hyps, list(items)), hyps
