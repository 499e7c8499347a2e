"""A pack slot as the solo run's training state and back: the jobs' own checkpoints are the
pack's checkpoints.

``job_state(stacked, opt_state, k, like, solo_tx) -> (lora, opt_state)``: job ``k``'s LoRA tree
(its own ranks and targets, ``like``'s structure: lora_jax.lora.stack.unstack) and its
optimizer state in exactly the structure ``solo_tx.init(lora)`` has, where ``solo_tx`` is the
job's optimizer as the solo run builds it (lora_jax.train.optimizer.build_optimizer). A solo run
(``trainer.resume=true``) then restores the checkpoint as if it had written it.

``stack_states(fresh, states, likes) -> opt_state``: the inverse for the optimizer state: the
jobs' solo states put into the slots of the pack's freshly initialized stacked state ``fresh``
(lora_jax.train.packed_step.init_opt_state), padding and absent slots left as initialized (zero).
The LoRA trees go back with lora_jax.lora.stack.stack.

The pack's per-job transform (lora_jax.train.packed_step.job_optimizer) always chains a global-norm
clip (``inf`` when the job has none) while the solo chain has it only with ``optim.grad_clip``;
the clip keeps no state (an empty node), so both states have the same leaves in the same order.
The pack's moments (and MultiSteps' accumulated gradients) are LoRA-shaped with the pack's
padding (``[K, in, R]`` / ``[K, R, out]``): they are cut to (or filled from) the job's
``[in, r]`` / ``[r, out]`` like the LoRA tree itself.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
import optax

from lora_jax.lora.params import iter_adapters
from lora_jax.lora.stack import find_slot, put, unstack


def _lora_shaped(top: set) -> Any:
    return lambda x: isinstance(x, Mapping) and bool(x) and set(x) == top


def _cut(opt_state: Any, k: int, like: Mapping[str, Any], top: set) -> Any:
    """Slot ``k`` of the stacked state, in the pack's chain structure, with the job's shapes."""
    lora_shaped = _lora_shaped(top)
    cut = lambda x: unstack(x, k, like) if lora_shaped(x) else x[k]
    return jax.tree.map(cut, opt_state, is_leaf=lora_shaped)


def _spec(tree: Any) -> list[tuple[tuple[int, ...], np.dtype]]:
    return [(tuple(np.shape(x)), np.dtype(x.dtype)) for x in jax.tree.leaves(tree)]


def _check(got: Any, want: Any) -> None:
    g, w = _spec(got), _spec(want)
    if g != w:
        raise ValueError(
            "the pack's optimizer state of this job does not match the solo optimizer's state "
            f"({len(g)} vs {len(w)} leaves; shapes {g[:4]}... vs {w[:4]}...): "
            "lora_jax.train.packed_step.job_optimizer must chain the same transforms as "
            "lora_jax.train.optimizer.build_optimizer"
        )


def job_state(
    stacked: Mapping[str, Any],
    opt_state: Any,
    k: int,
    like: Mapping[str, Any],
    solo_tx: optax.GradientTransformation,
) -> tuple[dict, Any]:
    """Job ``k``'s ``(lora, opt_state)`` out of the pack's stacked ones (leading K axis)."""
    lora = unstack(stacked, k, like)
    own = _cut(opt_state, k, like, set(stacked))
    template = jax.eval_shape(solo_tx.init, lora)
    _check(own, template)
    return lora, jax.tree.unflatten(jax.tree.structure(template), jax.tree.leaves(own))


def stack_states(
    fresh: Any, states: Sequence[Any], likes: Sequence[Mapping[str, Any]], top: set
) -> Any:
    """The pack's optimizer state holding job k's solo state ``states[k]`` (k = 0..K-1) in its
    slot; ``fresh``: the stacked state as initialized, ``likes``: the jobs' LoRA trees, ``top``:
    the stacked LoRA tree's top-level keys."""
    lora_shaped = _lora_shaped(top)
    packed = []  # each job's state in the pack's chain structure
    for k, (st, like) in enumerate(zip(states, likes)):
        template = _cut(fresh, k, like, top)
        _check(st, template)
        packed.append(jax.tree.unflatten(jax.tree.structure(template), jax.tree.leaves(st)))

    def fill(node: Any, *own: Any) -> Any:
        if not lora_shaped(node):
            return np.stack([np.asarray(x) for x in own]).astype(np.asarray(node).dtype)
        out = jax.tree.map(np.array, node)  # host copies to fill
        for k, tree in enumerate(own):
            for path, name, ad in iter_adapters(tree):
                slot = find_slot(out, path, name)
                for key, value in ad.items():
                    if hasattr(value, "shape"):  # moments: frozen leaves are MaskedNode
                        put(slot, key, k, value)
        return out

    return jax.tree.map(fill, fresh, *packed, is_leaf=lora_shaped)
