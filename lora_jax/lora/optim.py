"""The trainable/frozen split as one label tree, and the optax transform built from it.

Only the LoRA tree is ever differentiated (the frozen base is a closed-over input of the
loss), so the label tree covers the LoRA tree: A, B and DoRA's magnitude ``m`` are
"trainable"; ``scale`` and PiSSA/OLoRA's initial factors ``a0``/``b0`` are "frozen".
``optax.multi_transform`` gives frozen leaves ``set_to_zero`` (no state, zero update) and the
inner optimizer sees them as ``MaskedNode``s, so it allocates no moments for them.

LoRA+ (Hayou et al., 2024; PEFT's ``create_loraplus_optimizer(loraplus_lr_ratio=...)``): B's
learning rate is ``ratio`` × A's. PEFT builds two AdamW parameter groups; AdamW's update is
linear in its learning rate (the decoupled weight decay too, ``lr·wd·p``), so this is A's update
rule with B's update multiplied by ``ratio`` (:func:`scale_b_updates`), which keeps one
optimizer state of the same structure with or without LoRA+. As in PEFT, 1-D trainable leaves
(a DoRA magnitude) count with B.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import optax

TRAINABLE, FROZEN = "trainable", "frozen"


def trainable_labels(lora: Mapping[str, Any]) -> Any:
    """Same structure as ``lora``: "trainable" for A/B/m leaves, "frozen" for everything else."""

    def label(path, _leaf):
        last = path[-1]
        name = getattr(last, "key", getattr(last, "name", None))
        return TRAINABLE if name in ("a", "b", "m") else FROZEN

    return jax.tree_util.tree_map_with_path(label, lora)


def _is_b(path: tuple, leaf: Any) -> bool:
    last = path[-1]
    return getattr(last, "key", getattr(last, "name", None)) in ("b", "m")


def scale_b_updates(tx: optax.GradientTransformation, ratio: Any) -> optax.GradientTransformation:
    """``tx`` with the updates of B leaves (and 1-D trainable leaves) times ``ratio`` (LoRA+);
    the same state as ``tx``. ``ratio`` may be a traced value (a pack's per-job ratio)."""

    def update(updates, state, params=None):
        updates, state = tx.update(updates, state, params)
        updates = jax.tree_util.tree_map_with_path(
            lambda p, u: u * jax.numpy.asarray(ratio, u.dtype) if _is_b(p, u) else u, updates
        )
        return updates, state

    return optax.GradientTransformation(tx.init, update)


def make_optimizer(
    tx: optax.GradientTransformation, lora: Mapping[str, Any], b_lr_ratio: Any = None
) -> optax.GradientTransformation:
    """``tx`` on the trainable leaves, nothing (no state, zero update) on the frozen ones;
    ``b_lr_ratio`` (LoRA+, ``optim.loraplus_lr_ratio``): B's learning rate is that × A's."""
    if b_lr_ratio is not None:
        tx = scale_b_updates(tx, b_lr_ratio)
    return optax.multi_transform(
        {TRAINABLE: tx, FROZEN: optax.set_to_zero()}, trainable_labels(lora)
    )
