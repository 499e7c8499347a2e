"""The adapters the engine trains, behind one small interface: K = 1 or K > 1.

The engine (lora_jax.train.engine) is one loop for any number of jobs; what differs with K is
only how their LoRA trees and optimizer states are held and stepped:

- :class:`OneAdapter` (K = 1): the job's own LoRA tree and its optax state
  (lora_jax.train.optimizer.build_optimizer), stepped by lora_jax.train.step.make_train_step.
- :class:`StackedAdapters` (K > 1): the K trees zero-padded and stacked on a leading axis
  (lora_jax.lora.stack), stepped by one ``jax.vmap`` of the same loss and optimizer
  (lora_jax.train.packed_step); a job whose loss or parameters become non-finite is frozen on
  device (its ``ok`` flag) while the others go on.

Both take the same mesh (``mesh=data|fsdp``: the batch rows split over the devices, the frozen
base by lora_jax.train.sharding's rules, the adapter state replicated or FSDP-sharded) and give
the engine the same things: ``step`` → metrics with a leading K axis, ``finite`` flags per job,
``job_state(k)`` (a job's checkpoint, exactly what its solo run saves), ``restore``,
``decode`` (hypotheses per job) and ``val_loss`` (one loss per job).

Why two holders and not one: the stacked step computes the same math, but its vmapped
programs differ from the solo step's (operand layouts, reductions), so a solo run through it
would not reproduce today's solo losses bit for bit, nor its speed; the solo holder is the
K = 1 special case written directly.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from lora_jax.lora.stack import stack
from lora_jax.models.layers import stack_layers
from lora_jax.train import sharding
from lora_jax.train.pack_state import job_state, stack_states
from lora_jax.train.packed_step import init_opt_state, job_hyperparams, make_packed_step
from lora_jax.train.step import make_eval_loss, make_full_train_step, make_train_step
from lora_jax.train.validation import validation_loss


def _all_finite(tree: Any) -> bool:
    """Whether every leaf of ``tree`` is finite (an update can overflow while the loss that
    produced it was finite)."""
    return all(bool(jnp.isfinite(x).all()) for x in jax.tree.leaves(tree))


class OneAdapter:
    """K = 1. ``jobs[0]`` carries ``tree`` (its initial LoRA tree) and ``tx`` (its optax
    transform)."""

    k = 1

    def __init__(self, jobs: Sequence[Any], module: Any, *, dropout: bool, label_smoothing: float,
                 loss_chunk: int | None, scan_prefix: str | None, mesh: Any = None,
                 mesh_rule: str = "replicated") -> None:  # fmt: skip
        (job,) = jobs
        self.job, self.tx, self.mesh, self.rule = job, job.tx, mesh, mesh_rule
        self.lora, self.opt = job.tree, job.tx.init(job.tree)
        self.prefix = scan_prefix
        self._step = make_train_step(
            module, job.tx, label_smoothing=label_smoothing, dropout=dropout,
            loss_chunk=loss_chunk, scan_prefix=scan_prefix, jit=mesh is None,
        )  # fmt: skip
        self._key = jax.random.PRNGKey(int(job.cfg.seed))
        self._last_loss: Any = None

    # -- resume
    def restore(self, step: int | None) -> tuple[int, list[dict]]:
        """The job's checkpoint of ``step`` (None: the newest that restores; broken newer ones
        are set aside) onto the mesh when there is one; returns the step and its stored meta
        (the training record of the earlier part)."""
        lora, opt = self.lora, self.opt
        if self.mesh is not None:  # restore straight onto this run's mesh
            lora = sharding.abstract(lora, sharding.state_shardings(lora, self.mesh, self.rule))
            opt = sharding.abstract(opt, sharding.state_shardings(opt, self.mesh, self.rule))
        self.lora, self.opt, step, meta = self.job.ckpt.restore(lora, opt, step=step)
        return step, [meta]

    def place(self, frozen: Any) -> Any:
        """Jit for the mesh and put the state on it; returns the frozen base as the step
        takes it (sharded on a mesh)."""
        if self.mesh is None:
            return frozen
        self._step, sh = sharding.shard_train_step(
            self._step, self.mesh, self.lora, self.opt, frozen, self.rule
        )
        self.lora = sharding.place(self.lora, sh["lora"])
        self.opt = sharding.place(self.opt, sh["opt_state"])
        return sharding.place(frozen, sh["frozen"])

    # -- the loop
    def step(self, frozen: Any, batch: Any, step: int) -> dict:
        self.lora, self.opt, m = self._step(
            self.lora, self.opt, frozen, batch, jax.random.fold_in(self._key, step)
        )
        self._last_loss = m["loss"]
        return m

    def finite(self, deep: bool = False) -> list[bool]:
        """Whether the job is still finite: its last loss (and with ``deep`` its parameters)."""
        ok = self._last_loss is None or bool(jnp.isfinite(self._last_loss))
        return [ok and (not deep or _all_finite(self.lora))]

    def job_state(self, k: int) -> tuple[Any, Any]:
        return self.lora, self.opt

    def trees_for_decoding(self) -> Any:
        return self.lora if self.prefix is None else stack_layers(self.lora, self.prefix)

    # -- evaluation
    def decode(self, lm: Any, decode: Any) -> list[list[str]]:
        """``decode(variables) -> hyps`` (lora_jax.eval.evaluate.decode_items, bound)."""
        return [decode({"params": lm.params, "lora": self.trees_for_decoding()})]

    def val_loss(self, eval_loss: Any, frozen: Any, batches: Sequence[dict]) -> list[float]:
        return [validation_loss(eval_loss, self.lora, frozen, batches)]

    def eval_loss_fn(self, module: Any) -> Any:
        return make_eval_loss(module)


class StackedAdapters:
    """K > 1: the jobs' trees stacked (lora_jax.lora.stack) and stepped by one vmapped step
    (lora_jax.train.packed_step). Each job carries ``tree``, ``tx`` (its solo optax transform:
    checkpoints are saved in its structure), ``lr_fn`` and ``cfg``."""

    def __init__(self, jobs: Sequence[Any], module: Any, *, dropout: bool, label_smoothing: float,
                 loss_chunk: int | None, scan_prefix: str | None, grad_accum: int,
                 total_updates: int, mesh: Any = None, mesh_rule: str = "replicated",
                 base: Any = None) -> None:  # fmt: skip
        from omegaconf import OmegaConf

        self.jobs, self.k, self.mesh, self.rule = list(jobs), len(jobs), mesh, mesh_rule
        self.accum = grad_accum
        self.base = base  # (params, lora_modules): a DoRA pack's absent slots (lora.stack)
        self.lora, self.mask = stack([j.tree for j in jobs], base)
        self.hp = job_hyperparams(
            [OmegaConf.to_container(j.cfg.optim) for j in jobs], [j.lr_fn for j in jobs],
            total_updates,
        )  # fmt: skip
        self.opt = init_opt_state(self.lora, self.hp, grad_accum)
        self.ok = jnp.ones((self.k,), bool)
        self.keys = jnp.stack([jax.random.PRNGKey(int(j.cfg.seed)) for j in jobs])
        self._step = make_packed_step(module, grad_accum=grad_accum, dropout=dropout,
                                      loss_chunk=loss_chunk, scan_prefix=scan_prefix,
                                      jit=mesh is None)  # fmt: skip
        self._host: Any = None  # a host copy of (lora, opt) for the checkpoints of one step

    def restore(self, step: int | None) -> tuple[int, list[dict]]:
        """Every job's checkpoint of ``step`` (the newest step all of them hold), restacked."""
        restored = [j.ckpt.restore(j.tree, j.tx.init(j.tree), step=step) for j in self.jobs]
        self.lora, _ = stack([r[0] for r in restored], self.base)
        self.opt = stack_states(self.opt, [r[1] for r in restored], [j.tree for j in self.jobs],
                                set(self.lora))  # fmt: skip
        self.opt = jax.tree.map(jnp.asarray, self.opt)
        return int(step), [r[3] for r in restored]

    def place(self, frozen: Any) -> Any:
        if self.mesh is None:
            return frozen
        ins, outs = stacked_step_shardings(self.lora, self.opt, frozen, self.mesh, self.rule)
        self._step = jax.jit(self._step, in_shardings=ins, out_shardings=outs,
                             donate_argnums=(0, 1, 2))  # fmt: skip
        self.lora, self.opt = sharding.place(self.lora, ins[0]), sharding.place(self.opt, ins[1])
        self.mask = sharding.place(self.mask, ins[3])
        return sharding.place(frozen, ins[6])

    def step(self, frozen: Any, batch: Any, step: int) -> dict:
        self._host = None
        self.lora, self.opt, self.ok, m = self._step(
            self.lora, self.opt, self.ok, self.mask, self.hp, self.keys, frozen, batch, step
        )
        return m

    def finite(self, deep: bool = False) -> list[bool]:
        return [bool(x) for x in jax.device_get(self.ok)]

    def job_state(self, k: int) -> tuple[Any, Any]:
        if self._host is None:  # one transfer for every job's checkpoint of this step
            self._host = jax.device_get((self.lora, self.opt))
        job = self.jobs[k]
        return job_state(self._host[0], self._host[1], k, job.tree, job.tx)

    def decode(self, lm: Any, decode_multi: Any) -> list[list[str]]:
        """``decode_multi(frozen, stacked) -> [K][items] hyps`` (lora_jax.eval.multi_decode)."""
        return decode_multi(lm.params, self.lora)

    def val_loss(self, eval_loss: Any, frozen: Any, batches: Sequence[dict]) -> list[float]:
        total, n = jnp.zeros((self.k,)), jnp.zeros((self.k,))
        for b in batches:
            s, t = eval_loss(self.lora, frozen, b)
            total, n = total + s, n + t
        total, n = jax.device_get((total, n))
        return [float(total[k] / max(float(n[k]), 1.0)) for k in range(self.k)]

    def eval_loss_fn(self, module: Any) -> Any:
        return jax.vmap(make_eval_loss(module), in_axes=(0, None, None))


class FullModel:
    """``method=full``, K = 1: every base weight is trained (the full fine-tuning baseline).
    The job's optimizer state covers every leaf. The base params become this holder's state:
    the engine's frozen base is dropped when training starts (the step donates the params),
    so the base is held once."""

    k = 1

    def __init__(self, jobs: Sequence[Any], module: Any, params: Any, *, label_smoothing: float,
                 loss_chunk: int | None, **_: Any) -> None:  # fmt: skip
        (job,) = jobs
        self.job, self.params, self.opt = job, params, job.tx.init(params)
        self._step = make_full_train_step(module, job.tx, label_smoothing=label_smoothing,
                                          loss_chunk=loss_chunk)  # fmt: skip
        self._last_loss: Any = None

    def restore(self, step: int | None) -> tuple[int, list[dict]]:
        self.params, self.opt, step, meta = self.job.ckpt.restore(self.params, self.opt, step=step)
        return step, [meta]

    def place(self, frozen: Any) -> Any:
        return None  # the params are this holder's state from now on

    def step(self, frozen: Any, batch: Any, step: int) -> dict:
        self.params, self.opt, m = self._step(self.params, self.opt, batch)
        self._last_loss = m["loss"]
        return m

    def finite(self, deep: bool = False) -> list[bool]:
        ok = self._last_loss is None or bool(jnp.isfinite(self._last_loss))
        return [ok and (not deep or _all_finite(self.params))]

    def job_state(self, k: int) -> tuple[Any, Any]:
        return self.params, self.opt

    def decode(self, lm: Any, decode: Any) -> list[list[str]]:
        return [decode({"params": self.params})]

    def val_loss(self, eval_loss: Any, frozen: Any, batches: Sequence[dict]) -> list[float]:
        return [validation_loss(eval_loss, {}, self.params, batches)]

    def eval_loss_fn(self, module: Any) -> Any:
        return make_eval_loss(module)


def full_memory_estimate(params: Any, grad_accum: int) -> str:
    """What full fine-tuning holds beyond the forward's activations: the params, their
    gradients, AdamW's two moments (fp32) and, with accumulation, the accumulated gradients."""
    n = sum(int(np.size(x)) for x in jax.tree.leaves(params))
    p_bytes = sum(int(np.size(x)) * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(params))
    state = 2 * 4 * n + (4 * n if grad_accum > 1 else 0)
    total = 2 * p_bytes + state
    gib = lambda b: f"{b / 2**30:.2f} GiB"
    return (f"full fine-tuning: {n:,} trainable parameters; params {gib(p_bytes)} + gradients "
            f"{gib(p_bytes)} + optimizer state {gib(state)} = {gib(total)} before activations")  # fmt: skip


def stacked_step_shardings(lora: Any, opt: Any, frozen: Any, mesh: Any,
                           rule: str = "replicated") -> tuple[tuple, tuple]:  # fmt: skip
    """The in/out shardings of the stacked step ``step(lora, opt_state, ok, mask, hp, keys,
    frozen, batch, step)`` on ``mesh``: the adapter state (and the mask, the same tree) by
    ``mesh.lora``'s rule, the frozen base by lora_jax.train.sharding's rules, the batch rows
    over the data axes, the rest replicated."""
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    rep = NamedSharding(mesh, P())
    sh_lora = sharding.state_shardings(lora, mesh, rule)
    sh_opt = sharding.state_shardings(opt, mesh, rule)
    sh_frozen = sharding.frozen_shardings(frozen, mesh)
    ins = (sh_lora, sh_opt, rep, sh_lora, rep, rep, sh_frozen, sharding.batch_sharding(mesh), rep)
    return ins, (sh_lora, sh_opt, rep, rep)


def host_metrics(pending: Sequence[dict], k: int) -> list[dict]:
    """The device metrics of the steps since the last log point, on the host, each value an
    array with a leading job axis ``[K]`` (the K = 1 step returns scalars)."""
    host = jax.device_get(list(pending))
    return [{n: np.reshape(np.asarray(v), (k,)) for n, v in h.items()} for h in host]
