"""One jitted training step for K jobs: ``jax.vmap`` of the solo step over the adapter axis.

``step(lora, opt_state, ok, mask, hp, keys, frozen, batch, step) -> (lora, opt_state, ok,
metrics)``: ``lora``/``opt_state``/``mask``/``hp``/``keys``/``ok`` carry a leading K axis
(lora_jax.lora.stack); the frozen base and the batch are shared (``in_axes=None``).

Per job, the step is the solo one (lora_jax.train.step) with its hyperparameters as traced values:
AdamW (b1, b2, eps, weight decay) after global-norm clipping (``grad_clip = inf`` when the job
has none: ``clip_by_global_norm`` then selects the unscaled update exactly; gradients are
masked first, so padding never counts in the norm), the learning rate
read from the job's own schedule table ``hp["lr"][count]`` (the values of the solo run's
schedule, lora_jax.train.optimizer.schedule), label smoothing as a traced ε (ε = 0 gives the plain NLL
exactly), dropout from the job's key folded with the step as the solo run does. Updates are
multiplied by the trainable mask. A job whose loss or new parameters are not finite keeps its
last state and its ``ok`` flag drops to False for good: the other jobs are unaffected and no
host sync is added (the runner reads ``ok`` at log points).

``trainer.remat`` / ``trainer.scan`` / ``trainer.loss_chunk`` apply as in the solo step: the
module comes built with them, the loss is the solo one (:func:`make_packed_grads`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from lora_jax.lora import make_optimizer
from lora_jax.models.layers import stack_layers
from lora_jax.train.step import make_loss, step_metrics

HP_KEYS = ("b1", "b2", "eps", "weight_decay", "grad_clip", "label_smoothing")


def job_hyperparams(
    optim_cfgs: list[Mapping[str, Any]], lr_fns: list[Callable], total: int
) -> dict:
    """Per-job hyperparameters, each [K] float32, and ``lr``: [K, total + 1], job k's schedule
    at optimizer counts 0..total (evaluated by the same jitted schedule function as the solo
    run's optimizer)."""
    counts = jnp.arange(total + 1)
    lr = np.stack([np.asarray(jax.jit(jax.vmap(f))(counts), np.float32) for f in lr_fns])
    hp = {k: np.asarray([float(c.get(k) or 0.0) for c in optim_cfgs], np.float32) for k in HP_KEYS}
    hp["grad_clip"] = np.asarray([float(c["grad_clip"]) if c.get("grad_clip") else np.inf
                                  for c in optim_cfgs], np.float32)  # fmt: skip
    hp["loraplus_lr_ratio"] = np.asarray(  # LoRA+; 1 = plain LoRA (times 1.0 is exact)
        [float(c.get("loraplus_lr_ratio") or 1.0) for c in optim_cfgs], np.float32
    )
    return {k: jnp.asarray(v) for k, v in hp.items()} | {"lr": jnp.asarray(lr)}


def job_optimizer(
    hp: Mapping[str, jax.Array], lora_like: Any, grad_accum: int
) -> optax.GradientTransformation:
    """One job's optax transform from its (traced) hyperparameters; the same chain as
    lora_jax.train.optimizer.build_optimizer."""
    table = hp["lr"]
    lr = lambda count: table[jnp.minimum(count, table.shape[0] - 1)]
    tx = optax.chain(
        optax.clip_by_global_norm(hp["grad_clip"]),
        optax.adamw(lr, b1=hp["b1"], b2=hp["b2"], eps=hp["eps"], weight_decay=hp["weight_decay"]),
    )
    tx = make_optimizer(tx, lora_like, b_lr_ratio=hp.get("loraplus_lr_ratio"))
    if grad_accum > 1:
        tx = optax.MultiSteps(tx, every_k_schedule=grad_accum)
    return tx


def init_opt_state(stacked: Any, hp: Mapping[str, jax.Array], grad_accum: int) -> Any:
    """Each job's optimizer state, stacked on the K axis."""
    return jax.vmap(lambda lora, h: job_optimizer(h, lora, grad_accum).init(lora))(
        stacked, dict(hp)
    )


def _all_finite(tree: Any) -> jax.Array:
    return jnp.all(jnp.stack([jnp.isfinite(x).all() for x in jax.tree.leaves(tree)]))


def make_packed_grads(
    module: nn.Module,
    *,
    dropout: bool = False,
    loss_chunk: int | None = None,
    scan_prefix: str | None = None,
) -> Callable:
    """One job's ``grads(lora, frozen, batch, rng, label_smoothing) -> ((loss, aux), grads)``:
    the solo step's loss (lora_jax.train.step.make_loss, with ``trainer.loss_chunk``) of the module as
    built with ``trainer.remat`` / ``trainer.scan``; with ``scan_prefix`` the frozen tree comes
    stacked (lora_jax.models.layers.stack_layers, once, outside the step) and the job's per-layer
    LoRA tree is stacked inside, as in lora_jax.train.step.make_train_step."""
    loss = make_loss(module, 0.0, loss_chunk)

    def loss_fn(lora, frozen, batch, rng, eps):
        if scan_prefix is not None:
            lora = stack_layers(lora, scan_prefix)
        return loss({"params": frozen, "lora": lora}, batch, rng if dropout else None, eps)

    return jax.value_and_grad(loss_fn, has_aux=True)


@functools.lru_cache(maxsize=16)  # packs of one model in one process share the compiled step
def make_packed_step(
    module: nn.Module,
    *,
    grad_accum: int = 1,
    dropout: bool = False,
    jit: bool = True,
    loss_chunk: int | None = None,
    scan_prefix: str | None = None,
) -> Callable:
    """``step(lora, opt_state, ok, mask, hp, keys, frozen, batch, step)``; see the module doc.
    ``module``, ``loss_chunk`` and ``scan_prefix``: as for :func:`make_packed_grads`."""
    grads_of = make_packed_grads(
        module, dropout=dropout, loss_chunk=loss_chunk, scan_prefix=scan_prefix
    )

    def job_step(lora, opt_state, ok, mask, hp, key, frozen, batch, step):
        rng = jax.random.fold_in(key, step)
        (loss, aux), grads = grads_of(lora, frozen, batch, rng, hp["label_smoothing"])
        # padding and absent slots: zero gradients (a DoRA magnitude on a slot the job lacks
        # would get one; it must count in neither the clipping norm nor the moments)
        grads = jax.tree.map(lambda g, m: jnp.where(m > 0, g, 0.0), grads, mask)
        updates, new_opt = job_optimizer(hp, lora, grad_accum).update(grads, opt_state, lora)
        updates = jax.tree.map(lambda u, m: jnp.where(m > 0, u, 0.0), updates, mask)
        new = optax.apply_updates(lora, updates)
        keep = ok & jnp.isfinite(loss) & _all_finite(new)
        pick = lambda n, o: jnp.where(keep, n, o)
        metrics = step_metrics(loss, aux, grads, updates)
        return jax.tree.map(pick, new, lora), jax.tree.map(pick, new_opt, opt_state), keep, metrics

    step = jax.vmap(job_step, in_axes=(0, 0, 0, 0, 0, 0, None, None, None))
    return jax.jit(step, donate_argnums=(0, 1, 2)) if jit else step
