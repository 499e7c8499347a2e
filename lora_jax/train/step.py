"""The jitted training step: one pure function of pytrees.

``train_step(lora, opt_state, frozen, batch, rng) -> (lora, opt_state, metrics)``
differentiates the LoRA tree only: the frozen params are a plain input, so XLA never forms
their gradient, and the LoRA branch is computed unmerged inside the Dense layers (W + s·BA is
never materialized). ``lora`` and ``opt_state`` are donated.

Batches are right-padded (lora_jax/tasks/batching.py): the model gets per-row lengths
(``seq_lengths``), so attention needs no mask (causal flag + key lengths). With sequence
packing (``data.packing``) a batch is rows of several examples each, with ``segment_ids`` and
per-example ``positions``; the loss is the same sum over the same target tokens divided by their
count, so the same examples give the same loss and gradients packed or not.
With ``loss_chunk`` set, the model returns its final hidden states and the LM head runs inside
the loss, ``loss_chunk`` target tokens at a time (:func:`lm_loss_chunked`), so ``[B, T, V]``
fp32 logits never exist at once.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from lora_jax.models.layers import stack_layers

Batch = Mapping[str, jax.Array]  # input_ids [B, T] int32, attention_mask [B, T], loss_mask [B, T]


def lm_loss(
    logits: jax.Array, batch: Batch, label_smoothing: float = 0.0
) -> tuple[jax.Array, dict]:
    """Next-token cross entropy over the target tokens (``loss_mask[:, t] = 1`` marks token t as
    a target, predicted from position t-1), mean over target tokens.

    Label smoothing as in the original LoRA code (microsoft/LoRA examples/NLG/src/model.py):
    ``(1-ε)·nll + ε·mean_v(-log p_v)``.
    """
    logits = logits[:, :-1].astype(jnp.float32)
    labels = batch["input_ids"][:, 1:]
    w = batch["loss_mask"][:, 1:].astype(jnp.float32)
    lse = jax.nn.logsumexp(logits, axis=-1)
    nll = lse - jnp.take_along_axis(logits, labels[..., None], axis=-1)[..., 0]
    if not isinstance(label_smoothing, (int, float)) or label_smoothing > 0.0:  # traced: packs
        smooth = lse - logits.mean(axis=-1)
        per_tok = (1.0 - label_smoothing) * nll + label_smoothing * smooth
    else:
        per_tok = nll
    n = jnp.maximum(w.sum(), 1.0)
    return (per_tok * w).sum() / n, {"nll": (nll * w).sum() / n, "tokens": w.sum()}


def lm_loss_chunked(
    hidden: jax.Array,
    head: jax.Array,
    batch: Batch,
    label_smoothing: float = 0.0,
    chunk: int = 1024,
) -> tuple[jax.Array, dict]:
    """:func:`lm_loss` from the final hidden states ``[B, T, d]`` and the LM head ``[d, V]``:
    target tokens go through the head ``chunk`` at a time (``jax.lax.map`` over a
    rematerialised body), so at most ``[chunk, V]`` fp32 logits are live, in the forward and in
    the backward. Logits are ``hidden · head`` in the hidden states' dtype, accumulated in fp32,
    as the models compute them."""
    b, t, d = hidden.shape
    n = b * (t - 1)
    h = hidden[:, :-1].reshape(n, d)
    labels = batch["input_ids"][:, 1:].reshape(n)
    w = batch["loss_mask"][:, 1:].astype(jnp.float32).reshape(n)
    chunk = max(1, min(chunk, n))
    pad = (-n) % chunk
    if pad:
        h = jnp.pad(h, ((0, pad), (0, 0)))
        labels, w = jnp.pad(labels, (0, pad)), jnp.pad(w, (0, pad))
    head = head.astype(hidden.dtype)
    smoothing = (
        not isinstance(label_smoothing, (int, float)) or label_smoothing > 0.0
    )  # traced: packs

    @jax.checkpoint
    def part(args):
        hc, lc, wc = args
        logits = jnp.dot(hc, head, preferred_element_type=jnp.float32)  # [chunk, V]
        lse = jax.nn.logsumexp(logits, axis=-1)
        nll = lse - jnp.take_along_axis(logits, lc[:, None], axis=-1)[:, 0]
        smooth = lse - logits.mean(axis=-1) if smoothing else nll
        return jnp.stack([(nll * wc).sum(), (smooth * wc).sum()])

    k = (n + pad) // chunk
    sums = jax.lax.map(
        part, (h.reshape(k, chunk, d), labels.reshape(k, chunk), w.reshape(k, chunk))
    ).sum(axis=0)
    ntok = jnp.maximum(w.sum(), 1.0)
    nll = sums[0] / ntok
    loss = (1.0 - label_smoothing) * nll + label_smoothing * sums[1] / ntok
    return loss, {"nll": nll, "tokens": w.sum()}


def _forward(
    module: nn.Module,
    variables: dict,
    batch: Batch,
    rng: jax.Array | None,
    hidden: bool = False,
) -> jax.Array:
    """Logits ``[B, T, V]`` fp32 (or the final hidden states ``[B, T, d]``) of a right-padded
    batch, or of packed rows (a batch with ``segment_ids`` and ``positions``:
    lora_jax.tasks.batching.pack_examples)."""
    if "segment_ids" in batch:
        layout = {"segment_ids": batch["segment_ids"], "positions": batch["positions"]}
    else:
        layout = {"seq_lengths": jnp.sum(batch["attention_mask"], axis=1, dtype=jnp.int32)}
    out, _ = module.apply(
        variables,
        batch["input_ids"],
        **layout,
        deterministic=rng is None,
        rngs=None if rng is None else {"dropout": rng},
        **({"return_hidden": True} if hidden else {}),
    )
    return out


def make_loss(
    module: nn.Module, label_smoothing: float = 0.0, loss_chunk: int | None = None
) -> Callable:
    """``loss(variables, batch, rng, label_smoothing=) -> (loss, aux)``: plain (:func:`lm_loss`)
    or, with ``loss_chunk``, chunked over target tokens (:func:`lm_loss_chunked`). The smoothing
    ε given at the call (a traced value in a pack, lora_jax.train.packed_step) overrides the one built
    in."""
    if loss_chunk is not None and loss_chunk < 1:
        raise ValueError(f"loss_chunk must be a positive token count or null, got {loss_chunk}")

    def loss(variables, batch, rng, label_smoothing=label_smoothing):
        if loss_chunk is None:
            return lm_loss(_forward(module, variables, batch, rng), batch, label_smoothing)
        hidden = _forward(module, variables, batch, rng, hidden=True)
        head = module.head_kernel(variables["params"])
        return lm_loss_chunked(hidden, head, batch, label_smoothing, loss_chunk)

    return loss


def make_train_step(
    module: nn.Module,
    tx: optax.GradientTransformation,
    *,
    label_smoothing: float = 0.0,
    dropout: bool = False,
    jit: bool = True,
    loss_chunk: int | None = None,
    scan_prefix: str | None = None,
) -> Callable:
    """``train_step(lora, opt_state, frozen, batch, rng) -> (lora, opt_state, metrics)``.

    ``scan_prefix`` (for a module built with ``scan_layers=True``): ``frozen`` is given stacked
    (:func:`lora_jax.models.layers.stack_layers`, once, outside the step) while ``lora`` and
    ``opt_state`` keep the per-layer tree; the small LoRA tree is stacked inside the step."""
    loss = make_loss(module, label_smoothing, loss_chunk)

    def loss_fn(lora, frozen, batch, rng):
        if scan_prefix is not None:
            lora = stack_layers(lora, scan_prefix)
        return loss({"params": frozen, "lora": lora}, batch, rng if dropout else None)

    def train_step(lora, opt_state, frozen, batch, rng):
        (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(lora, frozen, batch, rng)
        updates, opt_state = tx.update(grads, opt_state, lora)
        lora = optax.apply_updates(lora, updates)
        return lora, opt_state, step_metrics(loss, aux, grads, updates)

    return jax.jit(train_step, donate_argnums=(0, 1)) if jit else train_step


def step_metrics(loss: jax.Array, aux: Mapping[str, jax.Array], grads: Any, updates: Any) -> dict:
    """The device-side metrics every train step returns (solo and packed)."""
    return {
        "loss": loss,
        "nll": aux["nll"],
        "tokens": aux["tokens"],
        "grad_norm": optax.global_norm(grads),
        "update_norm": optax.global_norm(updates),
    }


def make_full_finetune_step(
    module: nn.Module,
    tx: optax.GradientTransformation,
    *,
    label_smoothing: float = 0.0,
    jit: bool = True,
    loss_chunk: int | None = None,
) -> Callable:
    """Full fine-tuning of every base parameter (the FLOPs/memory baseline):
    ``step(params, opt_state, batch) -> (params, opt_state, metrics)``."""
    loss_of = make_loss(module, label_smoothing, loss_chunk)

    def step(params, opt_state, batch):
        def loss_fn(p):
            return loss_of({"params": p}, batch, None)

        (loss, _), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, {"loss": loss}

    return jax.jit(step, donate_argnums=(0, 1)) if jit else step


def make_full_train_step(
    module: nn.Module,
    tx: optax.GradientTransformation,
    *,
    label_smoothing: float = 0.0,
    jit: bool = True,
    loss_chunk: int | None = None,
) -> Callable:
    """Full fine-tuning in the engine (``method=full``): ``train_step(params, opt_state, batch)
    -> (params, opt_state, metrics)`` with the LoRA step's loss and metrics; every base leaf is
    differentiated and updated; ``params`` and ``opt_state`` are donated."""
    loss_of = make_loss(module, label_smoothing, loss_chunk)

    def train_step(params, opt_state, batch):
        def loss_fn(p):
            return loss_of({"params": p}, batch, None)

        (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        return params, opt_state, step_metrics(loss, aux, grads, updates)

    return jax.jit(train_step, donate_argnums=(0, 1)) if jit else train_step


def make_eval_loss(module: nn.Module) -> Callable:
    """``eval_loss(lora, frozen, batch) -> (sum of nll, n target tokens)`` (no smoothing)."""

    def eval_loss(lora, frozen, batch):
        variables = {"params": frozen} | ({"lora": lora} if lora else {})
        _, aux = lm_loss(_forward(module, variables, batch, None), batch, 0.0)
        return aux["nll"] * aux["tokens"], aux["tokens"]

    return jax.jit(eval_loss)


def compiled_flops(fn: Callable, *args: Any) -> float:
    """XLA's cost-analysis FLOP count of ``fn`` compiled for ``args``."""
    compiled = jax.jit(fn).lower(*args).compile()
    cost = compiled.cost_analysis()
    if isinstance(cost, list):
        cost = cost[0]
    return float(cost["flops"])
