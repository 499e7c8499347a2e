"""Decode the same prompts with K adapters in one jitted program per batch shape.

The decoder of lora_jax.eval.decoding (greedy or beam, one ``lax.while_loop``) is ``jax.vmap``-ed
over the adapter axis of a stacked LoRA tree (lora_jax.lora.stack); the frozen base, the
prompts and the cache layout are shared. Under vmap the loop runs until every adapter's rows
are done and keeps each adapter's finished rows unchanged, so adapter k's tokens are exactly
those of decoding with adapter k alone. The host loop (length-sorted batches, padding buckets)
is lora_jax.eval.decoding.generate's.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from lora_jax.errors import ConfigError
from lora_jax.eval import decoding


def generate_multi(
    module: Any,
    frozen: Any,
    stacked: Any,
    prompts: Sequence[Sequence[int]],
    *,
    cfg: Any,
    eos_token_id: int | Sequence[int],
    pad_token_id: int,
    max_new_tokens: int = 64,
    num_beams: int = 1,
    length_penalty: float = 1.0,
    no_repeat_ngram_size: int = 0,
    batch_size: int = 8,
    max_prompt_len: int | None = None,
) -> list[list[list[int]]]:
    """-> ``out[k][i]``: adapter k's generated ids for prompt i (no prompt, no EOS).

    ``stacked``: LoRA tree with a leading K axis on every leaf (``None`` or ``{}`` for K = 1
    without LoRA is not supported: use lora_jax.eval.decoding.generate)."""
    eos = decoding._check_args(prompts, eos_token_id, pad_token_id, max_new_tokens, num_beams,
                               no_repeat_ngram_size, False, batch_size, max_prompt_len)  # fmt: skip
    from lora_jax.models.registry import init_cache

    k = jax.tree.leaves(stacked)[0].shape[0]
    prompts = [list(p)[-max_prompt_len:] if max_prompt_len else list(p) for p in prompts]
    limit = getattr(cfg, "max_position_embeddings", None)
    longest = max(len(p) for p in prompts)
    if getattr(cfg, "family", None) == "gpt2" and limit and longest + max_new_tokens > limit:
        raise ConfigError(
            f"prompt of {longest} tokens + max_new_tokens={max_new_tokens} exceeds GPT-2's "
            f"{limit} learned positions; lower max_new_tokens"
        )
    spec = decoding._CacheSpec(init_cache, cfg, getattr(module, "dtype", jnp.float32))
    run = _multi_decoder(module, num_beams, max_new_tokens, float(length_penalty),
                         no_repeat_ngram_size, eos, int(pad_token_id), spec)  # fmt: skip
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    out: list[list[list[int]]] = [[[] for _ in prompts] for _ in range(k)]

    def collect(idx: list[int], result: Any) -> None:
        toks, lens = jax.device_get(result)  # [K, B, max_new], [K, B]
        for j in range(k):
            for r, i in enumerate(idx):
                out[j][i] = toks[j, r, : lens[j, r]].tolist()

    pending = None
    for lo in range(0, len(order), batch_size):
        idx = order[lo : lo + batch_size]
        rows = decoding._bucket(len(idx), batch_size)
        plen = decoding._bucket(max(len(prompts[i]) for i in idx), max_prompt_len or 1 << 30, low=8)
        ids = np.full((rows, plen), pad_token_id, np.int32)
        mask = np.zeros((rows, plen), np.int32)
        for r, i in enumerate(idx):
            p = prompts[i]
            ids[r, plen - len(p) :], mask[r, plen - len(p) :] = p, 1
        mask[len(idx) :, -1] = 1
        result = run(frozen, stacked, jnp.asarray(ids), jnp.asarray(mask))
        if pending is not None:
            collect(*pending)
        pending = (idx, result)
    collect(*pending)
    return out


_CACHE: dict = {}


def _multi_decoder(module, num_beams, max_new, length_penalty, ngram, eos, pad, spec):
    key = (module, num_beams, max_new, length_penalty, ngram, eos, pad, spec)
    if key not in _CACHE:
        one = decoding._decoder(
            module, num_beams, max_new, length_penalty, ngram, False, eos, pad, spec
        )

        def run(frozen, lora, ids, mask):  # the KV cache is built inside the decoder
            return one({"params": frozen, "lora": lora}, ids, mask)

        _CACHE[key] = jax.jit(jax.vmap(run, in_axes=(None, 0, None, None)))
    return _CACHE[key]


def decode_items_multi(
    module: Any,
    frozen: Any,
    stacked: Any,
    model_cfg: Any,
    tokenizer: Any,
    task: Any,
    items: Sequence[Any],
    fmt: str,
    decode_cfg: Mapping[str, Any],
    max_len: int,
    add_bos: bool | None = None,
) -> list[list[str]]:
    """Generated text per adapter per item, post-processed by the task: the multi-adapter
    counterpart of lora_jax.eval.evaluate.decode_items (same prompts, EOS ids and limits)."""
    from lora_jax.eval.evaluate import decode_request

    prompts, kw = decode_request(
        model_cfg, tokenizer, task, items, fmt, decode_cfg, max_len, add_bos
    )
    outs = generate_multi(module, frozen, stacked, prompts, **kw)
    return [
        [task.postprocess(tokenizer.decode(ids, skip_special_tokens=True)) for ids in out]
        for out in outs
    ]
