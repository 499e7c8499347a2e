"""A pack slot as the solo run's state and back (lora_jax.train.pack_state): after the same
gradients, job k's (lora, opt_state) cut out of the pack equals, in structure and values, what
the solo optimizer (lora_jax.train.optimizer.build_optimizer) reaches on the job's own tree, for
jobs with and without gradient clipping (the pack always chains a clip), with different ranks
and targets (padding and absent slots cut away), with and without gradient accumulation
(MultiSteps' accumulated gradients are LoRA-shaped too). Put back into a fresh pack state
(``stack_states``, what a resumed pack does), the solo states give the pack's state again. No
model: the gradients are random.

fp32 on CPU (``jax_default_matmul_precision`` "highest", tests/conftest.py); the updates are
elementwise, so both sides compute the same float32 operations."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from lora_jax.lora.stack import stack, unstack
from lora_jax.train.optimizer import build_optimizer
from lora_jax.train.pack_state import job_state, stack_states
from lora_jax.train.packed_step import init_opt_state, job_hyperparams, job_optimizer

D = 6


def _tree(rng, blocks: dict[str, int]) -> dict:
    """``{"h_0": {"attn": {name: {"a": [D, r], "b": [r, D], "scale": []}}}}``."""
    return {"h_0": {"attn": {
        n: {"a": jnp.asarray(rng.standard_normal((D, r)), jnp.float32),
            "b": jnp.asarray(rng.standard_normal((r, D)), jnp.float32),
            "scale": jnp.asarray(2.0 / r, jnp.float32)}
        for n, r in blocks.items()}}}  # fmt: skip


def _optim(lr: float, grad_clip: float | None, accum: int) -> dict:
    return dict(name="adamw", lr=lr, warmup_steps=1, schedule="linear", grad_clip=grad_clip,
                b1=0.9, b2=0.99, eps=1e-8, weight_decay=0.01, grad_accum=accum,
                label_smoothing=0.0)  # fmt: skip


@pytest.mark.parametrize("accum", [1, 2])
def test_job_state_is_the_solo_optimizer_state(accum):
    rng = np.random.default_rng(0)
    trees = [_tree(rng, {"q": 1, "v": 1}), _tree(rng, {"q": 4, "k": 2, "v": 4})]
    cfgs = [_optim(1e-2, None, accum), _optim(3e-2, 0.5, accum)]
    total = 4
    solo = [build_optimizer(c, t, total) for c, t in zip(cfgs, trees)]
    stacked, mask = stack(trees)
    hp = job_hyperparams(cfgs, [lr for _, lr in solo], total)
    opt_state = init_opt_state(stacked, hp, accum)

    def pack_update(lora, opt, m, h, g):  # the packed step's update (lora_jax.train.packed_step)
        updates, new_opt = job_optimizer(h, lora, accum).update(g, opt, lora)
        updates = jax.tree.map(lambda u, mk: jnp.where(mk > 0, u, 0.0), updates, m)
        return optax.apply_updates(lora, updates), new_opt

    def solo_update(tx, lora, st, g):
        g = jax.tree.map(lambda x: x if x.ndim else jnp.zeros_like(x), g)  # scale: no gradient
        updates, st = tx.update(g, st, lora)
        return optax.apply_updates(lora, updates), st

    pack_update = jax.jit(jax.vmap(pack_update))
    solo_updates = [jax.jit(lambda *a, tx=tx: solo_update(tx, *a)) for tx, _ in solo]
    solo_states = [(t, tx.init(t)) for (tx, _), t in zip(solo, trees)]
    for _ in range(2 * accum):
        grads = jax.tree.map(
            lambda x, m: jnp.asarray(rng.standard_normal(x.shape), jnp.float32) * m, stacked, mask
        )
        stacked, opt_state = pack_update(stacked, opt_state, mask, hp, grads)
        for k, like in enumerate(trees):
            solo_states[k] = solo_updates[k](*solo_states[k], unstack(grads, k, like))

    own = []
    for k, ((tx, _), like) in enumerate(zip(solo, trees)):
        lora, st = job_state(*jax.device_get((stacked, opt_state)), k, like, tx)
        own.append(st)
        want_lora, want_st = solo_states[k]
        assert jax.tree.structure(st) == jax.tree.structure(want_st)
        assert jax.tree.structure(lora) == jax.tree.structure(want_lora)
        got_leaves = jax.tree_util.tree_leaves_with_path((lora, st))
        for (path, got), want in zip(got_leaves, jax.tree.leaves((want_lora, want_st))):
            np.testing.assert_allclose(
                np.asarray(got), np.asarray(want), rtol=1e-6,
                atol=1e-6 * max(float(np.abs(want).max()), 1.0), err_msg=jax.tree_util.keystr(path),
            )  # fmt: skip

    fresh = init_opt_state(stack(trees)[0], hp, accum)
    back = stack_states(fresh, own, trees, set(stacked))
    assert jax.tree.structure(back) == jax.tree.structure(opt_state)
    for (path, got), want in zip(
        jax.tree_util.tree_leaves_with_path(back), jax.tree.leaves(opt_state)
    ):
        np.testing.assert_allclose(
            np.asarray(got), np.asarray(want), rtol=0, atol=0, err_msg=jax.tree_util.keystr(path)
        )


def test_job_state_refuses_a_foreign_optimizer():
    rng = np.random.default_rng(1)
    trees = [_tree(rng, {"q": 2})]
    cfg = _optim(1e-2, None, 1)
    _, lr = build_optimizer(cfg, trees[0], 4)
    stacked, _ = stack(trees)
    opt_state = init_opt_state(stacked, job_hyperparams([cfg], [lr], 4), 1)
    other = build_optimizer(_optim(1e-2, None, 2), trees[0], 4)[0]  # MultiSteps: other leaves
    with pytest.raises(ValueError, match="job_optimizer must chain the same transforms"):
        job_state(stacked, opt_state, 0, trees[0], other)
