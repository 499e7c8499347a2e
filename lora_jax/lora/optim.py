"""The trainable/frozen split as one label tree, and the optax transform built from it.

Only the LoRA tree is ever differentiated (the frozen base is a closed-over input of the
loss), so the label tree covers the LoRA tree: A and B are "trainable"; ``scale`` is "frozen".
``optax.multi_transform`` gives frozen leaves ``set_to_zero`` (no state, zero update) and the
inner optimizer sees them as ``MaskedNode``s, so it allocates no moments for them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import optax

TRAINABLE, FROZEN = "trainable", "frozen"


def trainable_labels(lora: Mapping[str, Any]) -> Any:
    """Same structure as ``lora``: "trainable" for A/B leaves, "frozen" for everything else."""

    def label(path, _leaf):
        last = path[-1]
        name = getattr(last, "key", getattr(last, "name", None))
        return TRAINABLE if name in ("a", "b") else FROZEN

    return jax.tree_util.tree_map_with_path(label, lora)


def make_optimizer(
    tx: optax.GradientTransformation, lora: Mapping[str, Any]
) -> optax.GradientTransformation:
    """``tx`` on the trainable leaves, nothing (no state, zero update) on the frozen ones."""
    return optax.multi_transform(
        {TRAINABLE: tx, FROZEN: optax.set_to_zero()}, trainable_labels(lora)
    )
