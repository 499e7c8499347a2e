"""The jitted training step: one pure function of pytrees.

``train_step(lora, opt_state, frozen, batch, rng) -> (lora, opt_state, metrics)``
differentiates the LoRA tree only: the frozen params are a plain input, so XLA never forms
their gradient, and the LoRA branch is computed unmerged inside the Dense layers (W + s·BA is
never materialized). ``lora`` and ``opt_state`` are donated.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

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
    if label_smoothing > 0.0:
        smooth = lse - logits.mean(axis=-1)
        per_tok = (1.0 - label_smoothing) * nll + label_smoothing * smooth
    else:
        per_tok = nll
    n = jnp.maximum(w.sum(), 1.0)
    return (per_tok * w).sum() / n, {"nll": (nll * w).sum() / n, "tokens": w.sum()}


def _forward(module: nn.Module, variables: dict, batch: Batch, rng: jax.Array | None) -> jax.Array:
    logits, _ = module.apply(
        variables,
        batch["input_ids"],
        attention_mask=batch["attention_mask"],
        deterministic=rng is None,
        rngs=None if rng is None else {"dropout": rng},
    )
    return logits


def make_train_step(
    module: nn.Module,
    tx: optax.GradientTransformation,
    *,
    label_smoothing: float = 0.0,
    dropout: bool = False,
    jit: bool = True,
) -> Callable:
    """``train_step(lora, opt_state, frozen, batch, rng) -> (lora, opt_state, metrics)``."""

    def loss_fn(lora, frozen, batch, rng):
        logits = _forward(module, {"params": frozen, "lora": lora}, batch, rng if dropout else None)
        return lm_loss(logits, batch, label_smoothing)

    def train_step(lora, opt_state, frozen, batch, rng):
        (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(lora, frozen, batch, rng)
        updates, opt_state = tx.update(grads, opt_state, lora)
        lora = optax.apply_updates(lora, updates)
        metrics = {
            "loss": loss,
            "nll": aux["nll"],
            "tokens": aux["tokens"],
            "grad_norm": optax.global_norm(grads),
            "update_norm": optax.global_norm(updates),
        }
        return lora, opt_state, metrics

    return jax.jit(train_step, donate_argnums=(0, 1)) if jit else train_step


def make_full_finetune_step(
    module: nn.Module,
    tx: optax.GradientTransformation,
    *,
    label_smoothing: float = 0.0,
    jit: bool = True,
) -> Callable:
    """Full fine-tuning of every base parameter (the FLOPs/memory baseline):
    ``step(params, opt_state, batch) -> (params, opt_state, metrics)``."""

    def step(params, opt_state, batch):
        def loss_fn(p):
            return lm_loss(_forward(module, {"params": p}, batch, None), batch, label_smoothing)

        (loss, _), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, {"loss": loss}

    return jax.jit(step, donate_argnums=(0, 1)) if jit else step


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
