"""The LoRA pytree: init, merge/unmerge, parameter counts.

Layout, mirroring the frozen params' module scopes (see lora_jax/lora/layer.py)::

    lora["h_3"]["attn"]["c_attn"]["q"] = {"a": [in, r], "b": [r, out_block], "scale": []}

A and B are float32 whatever the frozen base's dtype. ``scale`` is data (α/r or α/√r).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from lora_jax.lora.config import LoraConfig
from lora_jax.lora.targeting import Target, resolve
from lora_jax.quant import is_quantized

LoraTree = dict[str, Any]


def init(
    rng: jax.Array,
    params: Mapping[str, Any],
    cfg: LoraConfig,
    lora_modules: Mapping[str, tuple[str, ...]],
) -> tuple[LoraTree, list[Target]]:
    """Build the LoRA tree for ``params``; returns it and the resolved targets.

    A ([in, r]), by ``cfg.init``:
      "kaiming" (the default): PEFT's init_lora_weights=True (huggingface/peft
      src/peft/tuners/lora/layer.py reset_lora_parameters) and the original loralib's
      (github microsoft/LoRA loralib/layers.py): ``nn.init.kaiming_uniform_(A, a=√5)`` on
      A's [r, in] weight, bound = gain·√(3/fan_in) with gain = √(2/(1+a²)) = √(1/3), i.e.
      U(-1/√in, 1/√in), whatever r;
      "gaussian": PEFT's init_lora_weights="gaussian", N(0, (1/r)²).
    B = 0 (paper §4.1), so ΔW = s·A·B = 0 at initialization.
    """
    targets = resolve(cfg, params, lora_modules)
    keys = jax.random.split(rng, len(targets))
    tree: LoraTree = {}
    for key, t in zip(keys, targets):
        if cfg.init == "kaiming":
            bound = 1.0 / math.sqrt(t.d_in)  # fan_in = in
            a = jax.random.uniform(key, (t.d_in, t.r), jnp.float32, -bound, bound)
        else:  # "gaussian" (LoraConfig checks the name)
            a = jax.random.normal(key, (t.d_in, t.r), jnp.float32) / t.r
        leaf = {"a": a, "b": jnp.zeros((t.r, t.d_out), jnp.float32), "scale": jnp.float32(t.scale)}
        node = tree
        for seg in t.path:
            node = node.setdefault(seg, {})
        node[t.name] = leaf
    return tree, targets


def iter_adapters(lora: Mapping[str, Any], path: tuple[str, ...] = ()):
    """Yield (module path, block name, {"a", "b", "scale"}) for every adapter in the tree."""
    for key, child in lora.items():
        if isinstance(child, Mapping) and "a" in child and "b" in child:
            yield path, key, child
        elif isinstance(child, Mapping):
            yield from iter_adapters(child, path + (key,))


def _get(tree: Mapping[str, Any], path: tuple[str, ...]) -> Any:
    for seg in path:
        tree = tree[seg]
    return tree


def _blocks_of(
    path: tuple[str, ...], lora_modules: Mapping[str, tuple[str, ...]]
) -> tuple[str, ...]:
    for i in range(len(path)):
        blocks = lora_modules.get(".".join(path[i:]))
        if blocks is not None:
            return blocks
    raise KeyError(
        f"module {'/'.join(path)} is not in the model's LoRA module map {sorted(lora_modules)}"
    )


def delta(ad: Mapping[str, Any]) -> jax.Array:
    """ΔW = s·A·B for one adapter: [in, out_block], float32 (layers stacked by
    ``lora_jax.models.layers.stack_layers``: a [L, in, r], b [L, r, out], scale [L] ->
    [L, in, out_block])."""
    scale = jnp.asarray(ad["scale"], jnp.float32)[..., None, None]
    return scale * (ad["a"].astype(jnp.float32) @ ad["b"].astype(jnp.float32))


def _apply(params: Mapping[str, Any], lora: Mapping[str, Any], lora_modules, sign: float) -> dict:
    out = jax.tree.map(lambda x: x, dict(params))  # copy containers, share leaves
    for path, name, ad in iter_adapters(lora):
        blocks = _blocks_of(path, lora_modules)
        module = _get(out, path)
        kernel = module["kernel"]
        if is_quantized(kernel):  # QLoRA: merge into the dequantized base (a float32 kernel)
            kernel = kernel.dequantize(jnp.float32)
        width = kernel.shape[-1] // len(blocks)  # kernel [in, out] (or stacked [L, in, out])
        i = blocks.index(name)
        new = kernel.astype(jnp.float32).at[..., i * width : (i + 1) * width].add(sign * delta(ad))
        module["kernel"] = new.astype(kernel.dtype)
    return out


def merge(params: Mapping[str, Any], lora: Mapping[str, Any], lora_modules) -> dict:
    """W ← W + s·A·B for every adapter (inference and export; never in a training step)."""
    return _apply(params, lora, lora_modules, 1.0)


def unmerge(params: Mapping[str, Any], lora: Mapping[str, Any], lora_modules) -> dict:
    """Inverse of :func:`merge`: W ← W − s·A·B."""
    return _apply(params, lora, lora_modules, -1.0)


def count_params(tree: Any) -> int:
    """Number of weights; a quantized kernel (lora_jax.quant) counts its ``in·out`` weights."""
    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(tree, is_leaf=is_quantized)))


def count_trainable(lora: Mapping[str, Any]) -> int:
    """A and B entries only (``scale`` is data, not a parameter)."""
    return int(sum(ad["a"].size + ad["b"].size for _, _, ad in iter_adapters(lora)))
