"""K LoRA trees as one tree with a leading adapter axis, and back.

Every adapter slot of the pack is the union of the jobs' slots (module path + block). A slot's
rank R is the largest r any job gives it; a job's factors are zero-padded to it::

    stacked[...]["q"] = {"a": [K, in, R], "b": [K, R, out], "scale": [K]}
    mask[...]["q"]    = {"a": [K, in, R], "b": [K, R, out], "scale": [K]}   (1 = trainable)

Job k with rank r on that slot has ``a[k, :, :r]``, ``b[k, :r, :]`` and its own scale; padded
columns of A, rows of B and whole absent slots are zero (scale 0 too) with mask 0. With
A_pad = 0 and B_pad = 0 the padding adds exact zeros to the output and receives exactly zero
gradients; the step still multiplies updates by the mask so this holds for any optimizer.

Variants: PiSSA/OLoRA's frozen ``a0`` / ``b0`` are padded like A / B (zeros: no offset for a
job without them, so these inits mix freely with others in a pack). DoRA's ``m`` is ``[K, out]``;
a pack is all-DoRA or DoRA-free (lora.variant is a shared key of lora_jax.run.packs), and a
DoRA job without an adapter on a slot gets ``m`` = the base columns' norm (mask 0): with A = B =
0 its factor ``m/‖W‖`` is exactly 1, which needs the base (``stack(trees, base=(params,
lora_modules))``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax.numpy as jnp
import numpy as np

from lora_jax.lora.params import iter_adapters

Slot = tuple[tuple[str, ...], str]  # (module path, block name)


def _set(tree: dict, path: tuple[str, ...], name: str, value: Any) -> None:
    node = tree
    for seg in path:
        node = node.setdefault(seg, {})
    node[name] = value


def slots(trees: Sequence[Mapping[str, Any]]) -> dict[Slot, tuple[int, int, int]]:
    """Union of the trees' adapter slots -> (d_in, R, d_out), R the largest rank given to it."""
    out: dict[Slot, tuple[int, int, int]] = {}
    for tree in trees:
        for path, name, ad in iter_adapters(tree):
            d_in, r = ad["a"].shape
            d_out = ad["b"].shape[1]
            prev = out.get((path, name))
            if prev is not None and (prev[0], prev[2]) != (d_in, d_out):
                raise ValueError(
                    f"adapter {'/'.join(path)}/{name} has different shapes across jobs"
                )
            out[(path, name)] = (d_in, max(r, prev[1] if prev else 0), d_out)
    return out


def put(slot: Mapping[str, Any], key: str, k: int, value: Any) -> None:
    """Write job ``k``'s leaf ``key`` (its own rank) into a stacked slot of host arrays."""
    value = np.asarray(value)
    if key in ("a", "a0"):
        slot[key][k, :, : value.shape[1]] = value
    elif key in ("b", "b0"):
        slot[key][k, : value.shape[0], :] = value
    else:  # scale [], m [out]
        slot[key][k] = value


def take(slot: Mapping[str, Any], key: str, k: int, r: int) -> Any:
    """Job ``k``'s leaf ``key`` at rank ``r`` out of a stacked slot (a moment tree's frozen
    leaves are no arrays, MaskedNode: returned as they are)."""
    x = slot[key]
    if not hasattr(x, "shape"):
        return x
    if key in ("a", "a0"):
        return x[k, :, :r]
    if key in ("b", "b0"):
        return x[k, :r, :]
    return x[k]


def _base_norm(base: Any, path: tuple[str, ...], name: str) -> np.ndarray:
    from lora_jax.lora.params import blocks_of, dora_norm, kernel_block

    if base is None:
        raise ValueError(
            f"a DoRA job of this pack has no adapter on {'/'.join(path)}/{name}: stacking it "
            "needs the base params (stack(trees, base=(params, lora_modules)))"
        )
    params, modules = base
    blocks = blocks_of(path, modules)
    w = kernel_block(params, path, blocks.index(name), len(blocks))
    zero_a, zero_b = jnp.zeros((w.shape[0], 1)), jnp.zeros((1, w.shape[1]))
    return np.asarray(dora_norm(w, zero_a, zero_b, 0.0))  # the layer's own formula: f = 1


def stack(
    trees: Sequence[Mapping[str, Any]], base: Any = None, shapes_only: bool = False
) -> tuple[dict, dict]:
    """K LoRA trees -> (stacked tree, trainable mask), both float32 with a leading K axis.
    ``base``: ``(params, lora_modules)``, needed when a DoRA job lacks a slot another has
    (``shapes_only``: only the layout is wanted, e.g. a memory estimate: no values needed)."""
    k = len(trees)
    dora = {any("m" in ad for _, _, ad in iter_adapters(t)) for t in trees}
    if len(dora) > 1:
        raise ValueError(
            "DoRA and plain LoRA jobs cannot share a pack (lora.variant differs); "
            "lora_jax.run.packs puts them in separate packs"
        )
    stacked: dict = {}
    mask: dict = {}
    for (path, name), (d_in, r_max, d_out) in slots(trees).items():
        present = [find_slot(t, path, name) for t in trees]
        keys = {key for ad in present if ad is not None for key in ad}
        shapes = {"a": (d_in, r_max), "b": (r_max, d_out), "scale": (), "m": (d_out,),
                  "a0": (d_in, r_max), "b0": (r_max, d_out)}  # fmt: skip
        slot = {key: np.zeros((k, *shapes[key]), np.float32) for key in keys}
        mslot = {key: np.zeros((k, *shapes[key]), np.float32) for key in keys}
        for j, ad in enumerate(present):
            if ad is None:  # absent: zeros, never updated (DoRA: a factor of exactly 1)
                if "m" in keys and not shapes_only:
                    slot["m"][j] = _base_norm(base, path, name)
                continue
            for key in ad:
                put(slot, key, j, ad[key])
                if key in ("a", "b", "m"):
                    put(mslot, key, j, np.ones_like(np.asarray(ad[key])))
        _set(stacked, path, name, {key: jnp.asarray(v) for key, v in slot.items()})
        _set(mask, path, name, {key: jnp.asarray(v) for key, v in mslot.items()})
    return stacked, mask


def unstack(stacked: Mapping[str, Any], k: int, like: Mapping[str, Any]) -> dict:
    """Job ``k``'s own tree (the structure and ranks of ``like``, e.g. its initial tree); also
    cuts a LoRA-shaped optimizer subtree (Adam moments) of the stacked state."""
    out: dict = {}
    for path, name, ad in iter_adapters(like):
        s = find_slot(stacked, path, name)
        r = ad["a"].shape[1]
        _set(out, path, name, {key: take(s, key, k, r) for key in ad})
    return out


def find_slot(tree: Mapping[str, Any], path: tuple[str, ...], name: str) -> Any:
    node: Any = tree
    for seg in (*path, name):
        if not isinstance(node, Mapping) or seg not in node:
            return None
        node = node[seg]
    return node
