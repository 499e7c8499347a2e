"""One slot of a pack as the solo run's training state, for the job's own checkpoint.

``job_state(stacked, opt_state, k, like, solo_tx) -> (lora, opt_state)``: job ``k``'s LoRA tree
(its own ranks and targets, ``like``'s structure: lora_jax.packed.stack.unstack) and its
optimizer state in exactly the structure ``solo_tx.init(lora)`` has, where ``solo_tx`` is the
job's optimizer as the solo run builds it (lora_jax.optimizer.build_optimizer). A solo run
(``trainer.resume=true``) then restores the checkpoint as if it had written it.

The pack's per-job transform (lora_jax.packed.step.job_optimizer) always chains a global-norm
clip (``inf`` when the job has none) while the solo chain has it only with ``optim.grad_clip``;
the clip keeps no state (an empty node), so both states have the same leaves in the same order.
The pack's moments (and MultiSteps' accumulated gradients) are LoRA-shaped with the pack's
padding: they are cut back to the job's ranks and slots like the LoRA tree itself.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
import optax

from lora_jax.packed.stack import unstack


def job_state(
    stacked: Mapping[str, Any],
    opt_state: Any,
    k: int,
    like: Mapping[str, Any],
    solo_tx: optax.GradientTransformation,
) -> tuple[dict, Any]:
    """Job ``k``'s ``(lora, opt_state)`` out of the pack's stacked ones (leading K axis)."""
    lora = unstack(stacked, k, like)
    top = set(stacked)

    def lora_shaped(x: Any) -> bool:
        return isinstance(x, Mapping) and bool(x) and set(x) == top

    def cut(x: Any) -> Any:
        return unstack(x, k, like) if lora_shaped(x) else x[k]

    own = jax.tree.map(cut, opt_state, is_leaf=lora_shaped)
    template = jax.eval_shape(solo_tx.init, lora)
    got, want = jax.tree.leaves(own), jax.tree.leaves(template)
    spec = lambda leaves: [(tuple(np.shape(x)), np.dtype(x.dtype)) for x in leaves]
    if spec(got) != spec(want):
        raise ValueError(
            "the pack's optimizer state of this job does not match the solo optimizer's state "
            f"({len(got)} vs {len(want)} leaves; shapes {spec(got)[:4]}... vs {spec(want)[:4]}...)"
            ": lora_jax.packed.step.job_optimizer must chain the same transforms as "
            "lora_jax.optimizer.build_optimizer"
        )
    return lora, jax.tree.unflatten(jax.tree.structure(template), got)
