"""Batched greedy and beam-search decoding over the KV cache, one jitted loop per batch shape.

``generate`` left-pads prompts into a few fixed shapes (prompt length and batch size rounded up
to powers of two), then runs prefill + incremental steps inside one ``lax.while_loop`` that exits
early once every row is done: no per-token host sync. Semantics follow ``transformers``
(``generation/utils.py`` ``_sample`` and ``_beam_search``, v5):

- greedy: argmax of the processed logits; rows stop at any EOS id or ``max_new_tokens``.
- beam search: scores are sums of log-probs; each step keeps the top ``K = max(2, 1 + n_eos) ·
  num_beams`` continuations; a continuation that hits EOS (or the length limit) is a finished
  hypothesis only if it ranks among the top ``num_beams`` of those K, scored
  ``sum_logprobs / gen_len ** length_penalty`` with ``gen_len`` = generated tokens including the
  EOS; the best ``num_beams`` finished hypotheses are kept. ``early_stopping`` is HF's: ``False``
  (default) stops a row when its best running beam, scored at its current length, cannot beat
  the worst kept hypothesis; ``True`` stops once ``num_beams`` hypotheses exist; ``"never"`` uses
  the best possible length under a positive length penalty.
- ``no_repeat_ngram_size`` bans, like ``NoRepeatNGramLogitsProcessor``, every token that would
  repeat an n-gram of the prompt + generated text (padding excluded).

The model contract (lora_jax.models): ``module.apply(variables, ids [B,T], attention_mask=[B,T],
positions=[B,T], cache=cache, deterministic=True) -> (logits [B,T,V], cache)``, and
``init_cache(cfg, batch, max_len, dtype)`` whose leaves have batch on axis 0 except scalars.

Why one file: greedy and beam search share the padding, the cache handling and the one
``while_loop``; each is checked token for token against ``generate`` (tests/test_decoding.py),
and splitting them would separate the two halves of HF's stopping rules they must match.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from lora_jax.errors import ConfigError

NEG = -1.0e9  # HF's "very large negative" for beam bookkeeping (generation/utils.py)
EarlyStopping = bool | str


def generate(
    module: Any,
    variables: Any,
    prompts: Sequence[Sequence[int]],
    *,
    cfg: Any,
    eos_token_id: int | Sequence[int],
    pad_token_id: int,
    max_new_tokens: int = 64,
    num_beams: int = 1,
    length_penalty: float = 1.0,
    no_repeat_ngram_size: int = 0,
    early_stopping: EarlyStopping = False,
    batch_size: int = 8,
    max_prompt_len: int | None = None,
    init_cache: Callable[..., Any] | None = None,
) -> list[list[int]]:
    """Decode every prompt; returns the generated ids per prompt, without prompt and EOS.

    prompts: token-id lists of any lengths (order of the output matches). Prompts longer than
    ``max_prompt_len`` keep their last ``max_prompt_len`` tokens. ``batch_size`` counts prompts
    (each carries ``num_beams`` beams). ``init_cache`` defaults to
    ``lora_jax.models.registry.init_cache``.
    """
    eos = _check_args(
        prompts,
        eos_token_id,
        pad_token_id,
        max_new_tokens,
        num_beams,
        no_repeat_ngram_size,
        early_stopping,
        batch_size,
        max_prompt_len,
    )
    if init_cache is None:
        from lora_jax.models.registry import init_cache
    prompts = [list(p)[-max_prompt_len:] if max_prompt_len else list(p) for p in prompts]
    longest = max(len(p) for p in prompts)
    limit = getattr(cfg, "max_position_embeddings", None)
    if getattr(cfg, "family", None) == "gpt2" and limit and longest + max_new_tokens > limit:
        raise ConfigError(
            f"prompt of {longest} tokens + max_new_tokens={max_new_tokens} exceeds GPT-2's "
            f"{limit} learned positions; lower max_new_tokens or pass max_prompt_len="
            f"{limit - max_new_tokens}"
        )
    spec = _CacheSpec(init_cache, cfg, getattr(module, "dtype", jnp.float32))
    run = _decoder(
        module,
        num_beams,
        max_new_tokens,
        float(length_penalty),
        no_repeat_ngram_size,
        early_stopping,
        eos,
        int(pad_token_id),
        spec,
    )
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    out: list[list[int]] = [[] for _ in prompts]

    def collect(idx: list[int], result: Any) -> None:
        toks, lens = jax.device_get(result)
        for r, i in enumerate(idx):
            out[i] = toks[r, : lens[r]].tolist()

    pending = None  # dispatch batch k+1 before reading batch k back: the device never idles
    for lo in range(0, len(order), batch_size):
        idx = order[lo : lo + batch_size]
        rows = _bucket(len(idx), batch_size)
        plen = _bucket(max(len(prompts[i]) for i in idx), max_prompt_len or 1 << 30, low=8)
        ids = np.full((rows, plen), pad_token_id, np.int32)
        mask = np.zeros((rows, plen), np.int32)
        for r, i in enumerate(idx):
            p = prompts[i]
            ids[r, plen - len(p) :], mask[r, plen - len(p) :] = p, 1
        mask[len(idx) :, -1] = 1  # filler rows: one pad token, so no row is empty
        result = run(variables, jnp.asarray(ids), jnp.asarray(mask))
        if pending is not None:
            collect(*pending)
        pending = (idx, result)
    collect(*pending)
    return out


def _check_args(
    prompts,
    eos_token_id,
    pad_token_id,
    max_new_tokens,
    num_beams,
    no_repeat_ngram_size,
    early_stopping,
    batch_size,
    max_prompt_len,
) -> tuple[int, ...]:
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError(
            "every prompt needs at least one token (got an empty prompt list or prompt)"
        )
    if eos_token_id is None:
        raise ValueError("eos_token_id is required (GPT-2: 50256; or a list such as [50256, 628])")
    eos = tuple(int(e) for e in np.atleast_1d(np.asarray(eos_token_id, dtype=np.int64)))
    if not eos:
        raise ValueError("eos_token_id must be an int or a non-empty list of ints")
    if pad_token_id is None:
        raise ValueError("pad_token_id is required; GPT-2 has none, pass its eos id (50256)")
    if max_new_tokens < 1 or num_beams < 1 or batch_size < 1:
        raise ConfigError(
            f"max_new_tokens, num_beams and batch_size must be >= 1; got {max_new_tokens}, "
            f"{num_beams}, {batch_size}"
        )
    if no_repeat_ngram_size < 0:
        raise ConfigError(
            f"no_repeat_ngram_size must be >= 0 (0 = off); got {no_repeat_ngram_size}"
        )
    if early_stopping not in (True, False, "never"):
        raise ConfigError(f"early_stopping must be True, False or 'never'; got {early_stopping!r}")
    if max_prompt_len is not None and max_prompt_len < 1:
        raise ConfigError(f"max_prompt_len must be >= 1 or None; got {max_prompt_len}")
    return eos


def _bucket(n: int, cap: int, low: int = 1) -> int:
    """Smallest power of two >= max(n, low), at most ``cap`` (but never below n)."""
    return max(n, min(cap, 1 << max(low - 1, n - 1).bit_length()))


class _CacheSpec:
    """``init_cache``, the model config and the cache dtype as one hashable key, so the cache is
    built inside the jitted decoder: it never crosses the jit boundary (no host-built buffer
    to transfer, copy or donate) and the loop updates it in place as its carry. Configs that
    cannot be hashed (a dict field) are keyed by identity."""

    def __init__(self, fn: Callable[..., Any], cfg: Any, dtype: Any):
        self.fn, self.cfg, self.dtype = fn, cfg, dtype
        try:
            hash(cfg)
            self._key = (fn, cfg, dtype)
        except TypeError:
            self._key = (fn, id(cfg), dtype)

    def __hash__(self) -> int:
        return hash(self._key)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _CacheSpec) and self._key == other._key

    def __call__(self, rows: int, length: int) -> Any:
        return self.fn(self.cfg, rows, length, self.dtype)


@functools.lru_cache(maxsize=64)
def _decoder(module, num_beams, max_new, length_penalty, ngram, early_stopping, eos, pad, spec):
    """One jitted ``(variables, ids [B, P], mask [B, P]) -> (tokens [B, max_new], lengths [B])``
    that builds its KV cache (``spec(B, P + max_new)``) inside."""
    body = _greedy if num_beams == 1 else _beam
    fn = functools.partial(
        body,
        module,
        num_beams=num_beams,
        max_new=max_new,
        length_penalty=length_penalty,
        ngram=ngram,
        early_stopping=early_stopping,
        eos=eos,
        pad=pad,
    )

    def run(variables, ids, mask):
        return fn(variables, ids, mask, spec(ids.shape[0], ids.shape[1] + max_new))

    return jax.jit(run)


def _forward(module, variables, ids, mask, positions, cache):
    """Logits of the last position, float32 [B, V], and the updated cache."""
    logits, cache = module.apply(
        variables, ids, attention_mask=mask, positions=positions, cache=cache, deterministic=True
    )
    return logits[:, -1].astype(jnp.float32), cache


def _prefill(module, variables, ids, mask, cache):
    """ids, mask: [B, P] left-padded -> last logits [B, V], cache, prompt lengths [B].

    Two calls: the first ``P - 1`` tokens only fill the cache (their logits are unused, so XLA
    drops the ``[B, P-1, V]`` output projection, as ``generate`` does with
    ``logits_to_keep=1``), then the last token (always real: prompts are right-aligned) gives
    the logits."""
    positions = jnp.maximum(jnp.cumsum(mask, axis=1) - 1, 0).astype(jnp.int32)
    p = ids.shape[1]
    if p > 1:
        _, cache = module.apply(
            variables, ids[:, :-1], attention_mask=mask[:, :-1], positions=positions[:, :-1],
            cache=cache, deterministic=True,
        )  # fmt: skip
    logits, cache = _forward(module, variables, ids[:, -1:], mask[:, -1:], positions[:, -1:], cache)
    return logits, cache, mask.sum(axis=1).astype(jnp.int32)


def _is_eos(tok: jax.Array, eos: tuple[int, ...]) -> jax.Array:
    return (tok[..., None] == jnp.asarray(eos, tok.dtype)).any(-1)


def _ban_ngrams(scores, hist, start, cur, n):
    """Set to -inf every token that would repeat an n-gram of ``hist[:, start:cur]``.

    scores: [N, V]; hist: [N, S] token buffer (left-padded prompt, then generated tokens);
    start: [N] first real position; cur: scalar, number of filled buffer positions.
    """
    s = hist.shape[1]
    w = s - n + 1
    if w <= 0:
        return scores
    windows = jnp.stack([hist[:, j : j + w] for j in range(n)], axis=-1)  # [N, W, n]
    prefix = jax.lax.dynamic_slice_in_dim(hist, jnp.maximum(cur - (n - 1), 0), n - 1, axis=1)
    first = jnp.arange(w)
    valid = (first[None] >= start[:, None]) & (first[None] + n <= cur)
    match = valid & (windows[..., :-1] == prefix[:, None, :]).all(-1)
    v = scores.shape[-1]
    banned_tok = jnp.where(match, jnp.minimum(windows[..., -1], v), v)
    banned = jnp.zeros((scores.shape[0], v + 1), bool)
    banned = banned.at[jnp.arange(scores.shape[0])[:, None], banned_tok].set(True)
    return jnp.where(banned[:, :v], -jnp.inf, scores)


def _greedy(
    module,
    variables,
    ids,
    mask,
    cache,
    *,
    num_beams,
    max_new,
    length_penalty,
    ngram,
    early_stopping,
    eos,
    pad,
):
    del num_beams, length_penalty, early_stopping
    b, p = ids.shape
    logits, cache, plen = _prefill(module, variables, ids, mask, cache)
    hist = jnp.concatenate([ids, jnp.full((b, max_new), pad, jnp.int32)], axis=1)
    start = p - plen

    def pick(t, logits, hist, done, lens):
        if ngram:
            logits = _ban_ngrams(logits, hist, start, p + t, ngram)
        tok = jnp.where(done, pad, jnp.argmax(logits, axis=-1).astype(jnp.int32))
        hist = hist.at[:, p + t].set(tok)
        hit = _is_eos(tok, eos)
        lens = jnp.where(done | hit, lens, t + 1)
        return tok, hist, done | hit, lens

    done0 = jnp.zeros((b,), bool)
    tok, hist, done, lens = pick(0, logits, hist, done0, jnp.zeros((b,), jnp.int32))

    def cond(c):
        return (c[0] < max_new) & ~c[3].all()

    def step(c):
        t, tok, hist, done, lens, cache = c
        pos = (plen + t - 1)[:, None]
        logits, cache = _forward(
            module, variables, tok[:, None], jnp.ones((b, 1), jnp.int32), pos, cache
        )
        tok, hist, done, lens = pick(t, logits, hist, done, lens)
        return t + 1, tok, hist, done, lens, cache

    c = jax.lax.while_loop(cond, step, (jnp.int32(1), tok, hist, done, lens, cache))
    return c[2][:, p:], c[4]


def _gather(x, idx):
    """x: [B, M, ...], idx: [B, K] -> [B, K, ...]."""
    return jnp.take_along_axis(x, idx.reshape(idx.shape + (1,) * (x.ndim - 2)), axis=1)


def _generated_start(cache: Any, n: int) -> jax.Array | None:
    """[n] int32: the cache slot where each row's generated tokens begin (read right after the
    prefill): ``index`` for a cache written at one shared slot per step (all rows), or
    ``lengths`` for per-row left-aligned caches; None when the cache has neither."""
    if isinstance(cache, dict) and "lengths" in cache:
        return cache["lengths"].astype(jnp.int32)
    if isinstance(cache, dict) and "index" in cache:
        return jnp.broadcast_to(cache["index"].astype(jnp.int32), (n,))
    return None


def _reorder_generated(
    cache: Any, parent: jax.Array, start: jax.Array | None, width: int, slots: int
) -> Any:
    """Beam reorder: row ``j`` takes row ``parent[j]``'s cache, but only the ``width`` slots
    from ``start[j]`` (the generated tokens) move: the prompt slots are identical for every beam
    of a prompt (the cache was repeated after the prefill) and slots past the generated ones
    are unwritten. A leaf's slot axis is its one axis of size ``slots`` (the cache length);
    leaves without exactly one (or when ``start`` is None) are gathered whole. parent, start: [n].
    """
    n = parent.shape[0]

    def take(x):
        if x.ndim == 0 or x.shape[0] != n:
            return x
        axes = [a for a in range(1, x.ndim) if x.shape[a] == slots]
        if start is None or len(axes) != 1 or width >= slots:
            return x[parent]
        ax = axes[0] - 1  # the slot axis within one row
        src = jax.vmap(lambda i, s0: jax.lax.dynamic_slice_in_dim(x[i], s0, width, ax))(
            parent, start
        )
        return jax.vmap(lambda xj, sj, s0: jax.lax.dynamic_update_slice_in_dim(xj, sj, s0, ax))(
            x, src, start
        )

    return jax.tree.map(take, cache)


def _beam(
    module,
    variables,
    ids,
    mask,
    cache,
    *,
    num_beams,
    max_new,
    length_penalty,
    ngram,
    early_stopping,
    eos,
    pad,
):
    b, p = ids.shape
    nb = num_beams
    n = b * nb
    k = max(2, 1 + len(eos)) * nb
    logits, cache, plen = _prefill(module, variables, ids, mask, cache)
    rep = lambda x: jnp.repeat(x, nb, axis=0) if x.ndim else x
    logits, cache = rep(logits), jax.tree.map(rep, cache)
    ids_n, start_n, plen_n = rep(ids), rep(p - plen), rep(plen)
    # HF divides by gen_len ** length_penalty in Python floats; same numbers, cast once.
    div = jnp.asarray(np.arange(1, max_new + 1, dtype=np.float64) ** length_penalty, jnp.float32)
    top_nb = jnp.arange(k) < nb
    is_true_es = early_stopping is True

    def pick(t, logits, s):
        logp = jax.nn.log_softmax(logits, axis=-1)
        if ngram:
            hist = jnp.concatenate([ids_n, s["run_tok"].reshape(n, max_new)], axis=1)
            logp = _ban_ngrams(logp, hist, start_n, p + t, ngram)
        v = logp.shape[-1]
        acc = (logp.reshape(b, nb, v) + s["run_score"][:, :, None]).reshape(b, nb * v)
        top_score, top_idx = jax.lax.top_k(acc, k)
        parent, tok = top_idx // v, (top_idx % v).astype(jnp.int32)
        top_seq = _gather(s["run_tok"], parent).at[:, :, t].set(tok)  # [B, K, max_new]
        eos_hit = _is_eos(tok, eos)
        hits = eos_hit | (t + 1 >= max_new)
        # e. the best num_beams unfinished continuations keep running
        run_score = top_score + hits * NEG
        keep = jax.lax.top_k(run_score, nb)[1]
        new = dict(
            run_tok=_gather(top_seq, keep),
            run_score=_gather(run_score, keep),
            parent=_gather(parent, keep),
        )
        # f. finished hypotheses: only among the top num_beams, with length penalty
        just = hits & top_nb[None]
        cand = top_score / div[t]
        cand = cand + (s["fin"].all(-1, keepdims=True) & is_true_es) * NEG
        cand = cand + (~s["unsat"])[:, None] * NEG + (~just) * NEG
        m_score = jnp.concatenate([s["fin_score"], cand], axis=1)
        sel = jax.lax.top_k(m_score, nb)[1]
        cat = lambda a, c: _gather(jnp.concatenate([a, c], axis=1), sel)
        fin = dict(
            fin_tok=cat(s["fin_tok"], top_seq),
            fin_score=_gather(m_score, sel),
            fin_len=cat(s["fin_len"], jnp.where(eos_hit, t, t + 1)),
            fin=cat(s["fin"], just),
        )
        # g. can the running beams still beat the worst kept hypothesis?
        never = early_stopping == "never" and length_penalty > 0
        best = new["run_score"][:, :1] / (div[max_new - 1] if never else div[t])
        worst = jnp.where(fin["fin"], fin["fin_score"].min(1, keepdims=True), NEG)
        unsat = s["unsat"] & (best > worst).any(-1)
        done = ~unsat | hits.all(-1) | (fin["fin"].all(-1) & is_true_es)
        # rows already done keep their hypotheses (HF would have left the loop for them)
        frozen = s["done"][:, None]
        fin = {
            key: jnp.where(frozen.reshape(frozen.shape + (1,) * (x.ndim - 2)), s[key], x)
            for key, x in fin.items()
        }
        return {**new, **fin, "unsat": unsat, "done": s["done"] | done}

    s0 = dict(
        run_tok=jnp.full((b, nb, max_new), pad, jnp.int32),
        run_score=jnp.tile(jnp.asarray([0.0] + [NEG] * (nb - 1), jnp.float32), (b, 1)),
        parent=jnp.zeros((b, nb), jnp.int32),
        fin_tok=jnp.full((b, nb, max_new), pad, jnp.int32),
        fin_score=jnp.full((b, nb), NEG, jnp.float32),
        fin_len=jnp.zeros((b, nb), jnp.int32),
        fin=jnp.zeros((b, nb), bool),
        unsat=jnp.ones((b,), bool),
        done=jnp.zeros((b,), bool),
    )
    s = pick(0, logits, s0)
    flat_parent = lambda s: (s["parent"] + jnp.arange(b)[:, None] * nb).reshape(n)

    gen_start = _generated_start(cache, n)

    def reorder(cache, parent):
        return _reorder_generated(cache, parent, gen_start, max_new, p + max_new)

    def cond(c):
        return (c[0] < max_new) & ~c[1]["done"].all()

    def step(c):
        t, s, cache = c
        cache = reorder(cache, flat_parent(s))
        tok = s["run_tok"][:, :, t - 1].reshape(n, 1)
        pos = (plen_n + t - 1)[:, None]
        logits, cache = _forward(module, variables, tok, jnp.ones((n, 1), jnp.int32), pos, cache)
        return t + 1, pick(t, logits, s), cache

    _, s, _ = jax.lax.while_loop(cond, step, (jnp.int32(1), s, cache))
    return s["fin_tok"][:, 0], s["fin_len"][:, 0]


__all__ = ["generate"]
