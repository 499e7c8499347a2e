"""K LoRA trees as one tree with a leading adapter axis, and back.

Every adapter slot of the pack is the union of the jobs' slots (module path + block). A slot's
rank R is the largest r any job gives it; a job's factors are zero-padded to it::

    stacked[...]["q"] = {"a": [K, in, R], "b": [K, R, out], "scale": [K]}
    mask[...]["q"]    = {"a": [K, in, R], "b": [K, R, out], "scale": [K]}   (1 = trainable)

Job k with rank r on that slot has ``a[k, :, :r]``, ``b[k, :r, :]`` and its own scale; padded
columns of A, rows of B and whole absent slots are zero (scale 0 too) with mask 0. With
A_pad = 0 and B_pad = 0 the padding adds exact zeros to the output and receives exactly zero
gradients; the step still multiplies updates by the mask so this holds for any optimizer.
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


def stack(trees: Sequence[Mapping[str, Any]]) -> tuple[dict, dict]:
    """K LoRA trees -> (stacked tree, trainable mask), both float32 with a leading K axis."""
    k = len(trees)
    stacked: dict = {}
    mask: dict = {}
    for (path, name), (d_in, r_max, d_out) in slots(trees).items():
        a = np.zeros((k, d_in, r_max), np.float32)
        b = np.zeros((k, r_max, d_out), np.float32)
        scale = np.zeros((k,), np.float32)
        ma, mb = np.zeros_like(a), np.zeros_like(b)
        for j, tree in enumerate(trees):
            ad = find_slot(tree, path, name)
            if ad is None:
                continue  # absent: zeros, never updated
            r = ad["a"].shape[1]
            a[j, :, :r], b[j, :r, :] = np.asarray(ad["a"]), np.asarray(ad["b"])
            scale[j] = np.asarray(ad["scale"])
            ma[j, :, :r], mb[j, :r, :] = 1.0, 1.0
        _set(
            stacked,
            path,
            name,
            {"a": jnp.asarray(a), "b": jnp.asarray(b), "scale": jnp.asarray(scale)},
        )
        _set(
            mask,
            path,
            name,
            {"a": jnp.asarray(ma), "b": jnp.asarray(mb), "scale": jnp.zeros((k,), jnp.float32)},
        )
    return stacked, mask


def unstack(stacked: Mapping[str, Any], k: int, like: Mapping[str, Any]) -> dict:
    """Job ``k``'s own tree (the structure and ranks of ``like``, e.g. its initial tree); also
    cuts a LoRA-shaped optimizer subtree (Adam moments) of the stacked state."""
    out: dict = {}
    for path, name, ad in iter_adapters(like):
        s = find_slot(stacked, path, name)
        r = ad["a"].shape[1]
        scale = s["scale"]  # an optimizer state's moments hold no array here (MaskedNode)
        scale = scale[k] if hasattr(scale, "shape") else scale
        _set(out, path, name, {"a": s["a"][k, :, :r], "b": s["b"][k, :r, :], "scale": scale})
    return out


def find_slot(tree: Mapping[str, Any], path: tuple[str, ...], name: str) -> Any:
    node: Any = tree
    for seg in (*path, name):
        if not isinstance(node, Mapping) or seg not in node:
            return None
        node = node[seg]
    return node
