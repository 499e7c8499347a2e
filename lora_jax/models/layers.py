"""The stack of transformer blocks: a Python loop (default) or ``nn.scan`` (one compiled block
for any depth), each block optionally rematerialised.

Remat policies (``trainer.remat``), from least to most recomputation in the backward pass:

- ``none``: autodiff keeps every intermediate it needs.
- ``dots_saveable``: keep every matmul output (``jax.checkpoint_policies.dots_saveable``),
  recompute the elementwise ops (norms, activations, softmax).
- ``block``: keep only the weight matmuls' outputs
  (``dots_with_no_batch_dims_saveable``): the attention scores/softmax, which grow as T², and
  the elementwise ops are recomputed per block.
- ``full``: keep nothing inside a block (``nothing_saveable``): only the residual stream between
  blocks is stored, each block's forward runs again in the backward.

Scanned parameters are stacked: ``{prefix: {... leaves [L, ...]}}`` instead of
``{prefix_0: ..., prefix_{L-1}: ...}``. The per-layer tree stays the format that loading,
LoRA targeting, checkpoints and PEFT export use; :func:`stack_layers` / :func:`unstack_layers`
convert at the boundary (for ``params`` and ``lora`` trees alike). A scanned run holds the
frozen base once, stacked (``stack_layers(..., consume=True)``), and decodes it with
:class:`LayerViews`: the per-layer module on unstacked views made inside the jitted decoder.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from lora_jax.errors import ConfigError

# per-layer scope names: {prefix}_{i}
LAYER_PREFIX = {"gpt2": "h", "llama": "layers", "gemma": "layers", "phi3": "layers"}

REMAT_POLICIES = {
    "dots_saveable": jax.checkpoint_policies.dots_saveable,
    "block": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    "full": jax.checkpoint_policies.nothing_saveable,
}


def check_remat(remat: str) -> None:
    if remat != "none" and remat not in REMAT_POLICIES:
        raise ConfigError(f"unknown remat policy {remat!r}; use none, {', '.join(REMAT_POLICIES)}")


def run_layers(
    block_cls: type[nn.Module],
    kw: dict[str, Any],
    prefix: str,
    num_layers: int,
    x: jax.Array,
    positions: jax.Array,
    spec: Any,
    cache: Any,
    scan: bool,
    remat: str,
    layer_kw: Callable[[int], dict[str, Any]] | None = None,
) -> tuple[jax.Array, list]:
    """Apply ``num_layers`` blocks ``block_cls(**kw, **layer_kw(i))(x, positions, spec,
    layer_cache) -> (x, layer_cache)`` named ``{prefix}_{i}`` (loop) or ``{prefix}`` (scan,
    stacked params; every layer's ``layer_kw`` must then be the same). Returns ``(x, new layer
    caches)``."""
    check_remat(remat)
    cls = block_cls if remat == "none" else nn.remat(block_cls, policy=REMAT_POLICIES[remat])
    per_layer = [layer_kw(i) if layer_kw else {} for i in range(num_layers)]
    if not scan:
        new_layers = []
        for i in range(num_layers):
            lc = None if cache is None else cache["layers"][i]
            x, lc = cls(**kw, **per_layer[i], name=f"{prefix}_{i}")(x, positions, spec, lc)
            new_layers.append(lc)
        return x, new_layers
    if cache is not None:
        raise ValueError(
            "scan_layers is a training option: decode stacked params with "
            "LayerViews(module.clone(scan_layers=False), prefix) (what trainer.scan runs do)"
        )
    if any(p != per_layer[0] for p in per_layer):
        raise ConfigError(
            "scan_layers runs one compiled block for every layer, but this model's layers "
            f"differ ({sorted({str(p) for p in per_layer})}: sliding-window and global "
            "attention layers); use trainer.scan=false"
        )
    kw = {**kw, **per_layer[0]}
    scanned = nn.scan(
        cls,
        variable_axes={"params": 0, "lora": 0},
        split_rngs={"params": True, "dropout": True},
        in_axes=(nn.broadcast, nn.broadcast, nn.broadcast),
        length=num_layers,
    )
    x, _ = scanned(**kw, name=prefix)(x, positions, spec, None)
    return x, []


def stack_layers(tree: dict, prefix: str, consume: bool = False) -> dict:
    """``{prefix_0: t0, ..., prefix_{L-1}: t}`` -> ``{prefix: stacked [L, ...]}`` (other keys
    kept). Every layer must hold the same leaves (a LoRA tree must adapt every layer).

    ``consume``: delete each layer's arrays as soon as their stacked leaf exists, so the
    device never holds the two layouts of the frozen base (peak: one copy plus one stacked
    leaf). ``tree``'s layer arrays are unusable afterwards: for a tree the caller owns."""
    pat = re.compile(rf"^{re.escape(prefix)}_(\d+)$")
    idx = sorted(int(m.group(1)) for k in tree if (m := pat.match(k)))
    if not idx:
        return dict(tree)
    if idx != list(range(len(idx))):
        raise ValueError(f"layers {prefix}_i must be 0..L-1 for scan_layers; found {idx}")
    layers = [tree[f"{prefix}_{i}"] for i in idx]
    shapes = {str(jax.tree.structure(t)) for t in layers}
    if len(shapes) != 1:
        raise ConfigError(
            "scan_layers needs the same adapters in every layer (lora.layers / rank_pattern "
            "that differ per layer cannot be stacked); use trainer.scan=false"
        )
    out = {k: v for k, v in tree.items() if not pat.match(k)}
    if not consume:
        out[prefix] = jax.tree.map(lambda *xs: jnp.stack(xs), *layers)
        return out
    flat = [jax.tree.leaves(t) for t in layers]
    stacked = []
    for j in range(len(flat[0])):
        xs = [f[j] for f in flat]
        stacked.append(jnp.stack(xs))
        for x in xs:
            if isinstance(x, jax.Array) and not x.is_deleted():
                x.delete()
    out[prefix] = jax.tree.unflatten(jax.tree.structure(layers[0]), stacked)
    return out


def unstack_layers(tree: dict, prefix: str) -> dict:
    """Inverse of :func:`stack_layers`."""
    if prefix not in tree:
        return dict(tree)
    stacked = tree[prefix]
    n = jax.tree.leaves(stacked)[0].shape[0]
    out = {k: v for k, v in tree.items() if k != prefix}
    for i in range(n):
        out[f"{prefix}_{i}"] = jax.tree.map(lambda x, i=i: x[i], stacked)
    return out


@dataclasses.dataclass(frozen=True)
class LayerViews:
    """The per-layer (loop) ``module`` applied to variables whose layers are stacked
    (``{prefix: [L, ...]}``, params and/or lora): ``apply`` unstacks them first, so inside a
    jitted caller (the KV-cache decoder, the validation loss) the layers are views of the one
    stacked copy, not a second copy held between calls. Hashable, like a Flax module (the
    decoder caches its compiled loop per module); ``dtype`` is the module's."""

    module: nn.Module
    prefix: str

    @property
    def dtype(self) -> Any:
        return self.module.dtype

    def apply(self, variables: dict, *args: Any, **kwargs: Any) -> Any:
        views = {k: unstack_layers(dict(v), self.prefix) for k, v in variables.items()}
        return self.module.apply(views, *args, **kwargs)
