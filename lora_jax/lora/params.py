"""The LoRA pytree: init, merge/unmerge, parameter counts.

Layout, mirroring the frozen params' module scopes (see lora_jax/lora/layer.py)::

    lora["h_3"]["attn"]["c_attn"]["q"] = {"a": [in, r], "b": [r, out_block], "scale": []}

A and B are float32 whatever the frozen base's dtype. ``scale`` is data (α/r or α/√r).
Variants add leaves: ``m`` [out_block] (DoRA's magnitude, trainable) and ``a0``/``b0`` (PiSSA's
or OLoRA's initial factors, frozen data: the layer subtracts ``s·(x·a0)·b0``, so the base
behaves as PEFT's residual ``W - s·A0·B0`` while the stored base stays W; lora/layer.py).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from lora_jax.lora.config import LoraConfig
from lora_jax.lora.targeting import Target, resolve
from lora_jax.quant import is_quantized
from lora_jax.ranges import pissa_niter

LoraTree = dict[str, Any]


def factors(ad: Mapping[str, Any], dtype: Any = jnp.float32) -> tuple[jax.Array, jax.Array]:
    """The branch's factors ``(A', B')`` with ``s·A'·B'`` the adapter's ΔW on the base W:
    ``(a, b)``, or ``([a, a0], [b; -b0])`` (rank 2r) when it carries PiSSA/OLoRA's initial
    factors (the residual's offset); this is also the plain-LoRA adapter PEFT converts a PiSSA
    or OLoRA adapter to (``save_pretrained(path_initial_model_for_weight_conversion=...)``)."""
    a, b = ad["a"].astype(dtype), ad["b"].astype(dtype)
    if "a0" in ad:  # frozen data (no gradient flows to it)
        a0, b0 = jax.lax.stop_gradient(ad["a0"]), jax.lax.stop_gradient(ad["b0"])
        a = jnp.concatenate([a, a0.astype(dtype)], axis=-1)
        b = jnp.concatenate([b, -b0.astype(dtype)], axis=-2)
    return a, b


def dora_norm(
    w: jax.Array, a: jax.Array, b: jax.Array, scale: jax.Array, colsq: jax.Array | None = None
) -> jax.Array:
    """``‖W + s·A·B‖`` per output column (DoRA's weight norm) without forming ``W + s·A·B``:
    ``‖w_j‖² + 2s·(AᵀW ⊙ B)_j + s²·(B ⊙ AᵀA·B)_j`` summed over the rank axis. w: [in, out],
    a: [in, r], b: [r, out] -> [out] (float32 math). ``colsq``: ``Σ_i w_ij²`` if known."""
    w, a, b = w.astype(jnp.float32), a.astype(jnp.float32), b.astype(jnp.float32)
    s = jnp.asarray(scale, jnp.float32)
    colsq = jnp.sum(w * w, axis=0) if colsq is None else colsq
    cross = jnp.sum(jnp.dot(a.T, w) * b, axis=0)
    quad = jnp.sum(b * jnp.dot(jnp.dot(a.T, a), b), axis=0)
    return jnp.sqrt(jnp.maximum(colsq + 2.0 * s * cross + s * s * quad, 0.0))


def _kernel_block(params: Mapping[str, Any], t: Target) -> jax.Array:
    """The frozen kernel's column block of target ``t`` as float32 [in, out_block]."""
    return kernel_block(params, t.path, t.block, t.n_blocks)


def kernel_block(
    params: Mapping[str, Any], path: tuple[str, ...], index: int, n_blocks: int
) -> jax.Array:
    """Column block ``index`` of ``n_blocks`` of the frozen kernel at module ``path``, float32
    ``[in, out_block]`` (a quantized kernel dequantized; a ``trainer.scan`` base, whose layers
    are stacked under ``prefix`` as ``[L, ...]``, is read at the path's layer)."""
    layer = re.match(r"^(.+)_(\d+)$", path[0])
    if path[0] not in params and layer and layer[1] in params:
        kernel = module_at(params[layer[1]], path[1:])["kernel"]
    else:
        layer, kernel = None, module_at(params, path)["kernel"]
    if is_quantized(kernel):
        kernel = kernel.dequantize(jnp.float32)
    kernel = jnp.asarray(kernel, jnp.float32)
    if layer is not None:
        kernel = kernel[int(layer[2])]
    width = kernel.shape[-1] // n_blocks
    return kernel[:, index * width : (index + 1) * width]


def _randomized_svd(key: jax.Array, w: jax.Array, r: int, niter: int):
    """torch.svd_lowrank(w, q=r, niter) (Halko et al. 2011, alg. 4.4 as torch implements it,
    torch/_lowrank.py get_approximate_basis): the top-r U, S, V of w from a Gaussian sketch
    and ``niter`` QR-orthonormalized subspace iterations."""
    q = jnp.linalg.qr(w @ jax.random.normal(key, (w.shape[1], r), w.dtype))[0]
    for _ in range(niter):
        q = jnp.linalg.qr(w.T @ q)[0]
        q = jnp.linalg.qr(w @ q)[0]
    u, s, vh = jnp.linalg.svd(q.T @ w, full_matrices=False)
    return q @ u, s, vh.T


def _data_init(key: jax.Array, w: jax.Array, t: Target, how: str) -> tuple[jax.Array, jax.Array]:
    """PiSSA / OLoRA factors ``(a [in, r], b [r, out])`` of one kernel block ``w`` [in, out], as
    PEFT computes them on its ``[out, in]`` weight ``W_p = wᵀ`` (huggingface/peft
    src/peft/tuners/lora/layer.py ``pissa_init``, ``olora_init``), float32."""
    wp = w.T  # PEFT's [out, in]
    if how == "olora":
        q, rr = jnp.linalg.qr(wp)  # reduced: Q [out, k], R [k, in]
        return rr[: t.r].T, q[:, : t.r].T  # A = R[:r] -> a = Aᵀ; B = Q[:, :r] -> b = Bᵀ
    niter = pissa_niter(how)
    if niter is None:  # "pissa": the exact SVD, W_p = V·diag(S)·Uh
        v, sv, uh = jnp.linalg.svd(wp, full_matrices=False)
        v, sv, uh = v[:, : t.r], sv[: t.r], uh[: t.r]
    else:
        v, sv, u = _randomized_svd(key, wp, t.r, niter)
        uh = u.T
    root = jnp.sqrt(sv / t.scale)
    return (root[:, None] * uh).T, (v * root[None, :]).T  # A = diag(√(S/s))·Uh, B = V·diag(√(S/s))


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
    "pissa" / "pissa_niter_<K>" / "olora": A and B from the frozen block's SVD / QR (see
    :func:`_data_init`); the adapter keeps them as ``a0``, ``b0`` too, so ΔW = s·(AB - A0B0) = 0.
    ``cfg.variant == "dora"`` adds ``m = ‖W + s·A'·B'‖`` per column (= ‖W‖ at init), PEFT's.
    """
    targets = resolve(cfg, params, lora_modules)
    keys = jax.random.split(rng, len(targets))
    tree: LoraTree = {}
    for key, t in zip(keys, targets):
        if cfg.init == "kaiming":
            bound = 1.0 / math.sqrt(t.d_in)  # fan_in = in
            a = jax.random.uniform(key, (t.d_in, t.r), jnp.float32, -bound, bound)
            b = jnp.zeros((t.r, t.d_out), jnp.float32)
        elif cfg.init == "gaussian":
            a = jax.random.normal(key, (t.d_in, t.r), jnp.float32) / t.r
            b = jnp.zeros((t.r, t.d_out), jnp.float32)
        else:  # pissa, pissa_niter_<K>, olora (LoraConfig checks the name)
            a, b = _data_init(key, _kernel_block(params, t), t, cfg.init)
        leaf = {"a": a, "b": b, "scale": jnp.float32(t.scale)}
        if cfg.init not in ("kaiming", "gaussian"):
            leaf |= {"a0": jnp.copy(a), "b0": jnp.copy(b)}  # own buffers (steps donate a, b)
        if cfg.variant == "dora":
            a_, b_ = factors(leaf)
            leaf["m"] = dora_norm(_kernel_block(params, t), a_, b_, leaf["scale"])
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


def module_at(tree: Mapping[str, Any], path: tuple[str, ...]) -> Any:
    for seg in path:
        tree = tree[seg]
    return tree


def blocks_of(
    path: tuple[str, ...], lora_modules: Mapping[str, tuple[str, ...]]
) -> tuple[str, ...]:
    for i in range(len(path)):
        blocks = lora_modules.get(".".join(path[i:]))
        if blocks is not None:
            return blocks
    raise KeyError(
        f"module {'/'.join(path)} is not in the model's LoRA module map {sorted(lora_modules)}"
    )


def delta(ad: Mapping[str, Any], w: jax.Array | None = None) -> jax.Array:
    """ΔW of one adapter on its kernel block: [in, out_block], float32 (layers stacked by
    ``lora_jax.models.layers.stack_layers``: a [L, in, r], b [L, r, out], scale [L] ->
    [L, in, out_block]). LoRA: ``s·A·B`` (``s·(AB - A0B0)`` for PiSSA/OLoRA: the change from
    the base W). DoRA needs the base block ``w``: ``m/‖W + s·A'B'‖ · (W + s·A'B') - W``."""
    scale = jnp.asarray(ad["scale"], jnp.float32)
    a, b = factors(ad)
    d = scale[..., None, None] * (a @ b)
    if "m" not in ad:
        return d
    if w is None:
        raise ValueError("a DoRA adapter's ΔW needs its base kernel block (delta(ad, w))")
    w = jnp.asarray(w, jnp.float32)
    norm = jax.vmap(dora_norm)(w, a, b, scale) if w.ndim == 3 else dora_norm(w, a, b, scale)
    return (ad["m"].astype(jnp.float32) / norm)[..., None, :] * (w + d) - w


def _apply(params: Mapping[str, Any], lora: Mapping[str, Any], lora_modules, sign: float) -> dict:
    out = jax.tree.map(lambda x: x, dict(params))  # copy containers, share leaves
    for path, name, ad in iter_adapters(lora):
        blocks = blocks_of(path, lora_modules)
        module = module_at(out, path)
        kernel = module["kernel"]
        if is_quantized(kernel):  # QLoRA: merge into the dequantized base (a float32 kernel)
            kernel = kernel.dequantize(jnp.float32)
        width = kernel.shape[-1] // len(blocks)  # kernel [in, out] (or stacked [L, in, out])
        i = blocks.index(name)
        cols = slice(i * width, (i + 1) * width)
        k32 = jnp.asarray(kernel, jnp.float32)
        if "m" in ad and sign < 0:  # DoRA: W' = f·(W + ΔW) with f = m/‖W + ΔW‖ -> solve for W
            raise ValueError(
                "a DoRA adapter cannot be unmerged from the merged kernel alone (its column "
                "norms are of the unmerged weight); keep the base params and merge again"
            )
        new = k32.at[..., cols].add(sign * delta(ad, k32[..., cols]))
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
    """A, B and DoRA's ``m`` entries (``scale``, ``a0``, ``b0`` are data, not parameters)."""
    return int(
        sum(ad["a"].size + ad["b"].size + (ad["m"].size if "m" in ad else 0)
            for _, _, ad in iter_adapters(lora))
    )  # fmt: skip
