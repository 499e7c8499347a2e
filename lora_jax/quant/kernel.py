"""Frozen Dense kernels stored quantized and dequantized on the fly inside the jitted step.

A :class:`QuantizedKernel` sits in the frozen params tree where a ``kernel [in, out]`` array would
be. It is a pytree (its arrays are leaves, ``kind`` and ``shape`` static), so it passes through
``jit`` as an argument and only the packed bytes are resident; :func:`frozen_dot`, called by
``LoraDense``, dequantizes it inside the traced computation, per layer and per use (forward
and, rematerialized, backward), so no float copy of the base outlives one matmul.

The stored layout is the ``[out, in]`` weight of a torch ``nn.Linear`` (= the rows of a GGUF
matrix), blocks running along the input dimension, as bitsandbytes and llama.cpp both quantize.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from lora_jax.errors import DataError
from lora_jax.quant import gguf_blocks, int8, nf4

QUANT_MODES = ("none", "nf4", "int8", "keep")
KINDS = ("nf4", "int8", *gguf_blocks.FORMATS)


@struct.dataclass
class QuantizedKernel:
    """A frozen kernel ``[in, out]`` held as ``kind`` ("nf4", "int8", "q4_1", ...) data."""

    data: dict[str, jax.Array]
    kind: str = struct.field(pytree_node=False)
    shape: tuple[int, int] = struct.field(pytree_node=False)  # the kernel's [in, out]

    @property
    def size(self) -> int:
        return int(self.shape[0] * self.shape[1])

    @property
    def nbytes(self) -> int:
        return int(
            sum(np.dtype(v.dtype).itemsize * int(np.prod(v.shape)) for v in self.data.values())
        )

    def dequantize(self, dtype: Any = jnp.float32, after: jax.Array | None = None) -> jax.Array:
        """The kernel ``[in, out]`` in ``dtype`` (computed in fp32, then cast).

        ``after``: an array the dequantization is made to depend on, so that the scheduler
        dequantizes this kernel where it is used rather than every kernel up front (XLA:CPU
        drops optimization barriers and hoists parameter-only work, all float kernels alive at
        once). Every stored array gets ``+ isnan(after[0])``: exact unless ``after`` holds a NaN,
        when the matmul's output is NaN whatever the kernel.
        """
        data = self.data
        if after is not None:
            nan = jnp.isnan(jax.lax.stop_gradient(after.reshape(-1)[0]))
            data = {k: v + nan.astype(v.dtype) for k, v in data.items()}
        d_in, d_out = self.shape
        if self.kind == "nf4":
            w = nf4.dequantize(data, self.size).reshape(d_out, d_in)
        elif self.kind == "int8":
            w = int8.dequantize(data)
        else:
            w = gguf_blocks.dequantize(self.kind, data["blocks"], d_in)
        return w.T.astype(dtype)


def quantize_kernel(kernel: Any, kind: str) -> QuantizedKernel:
    """A float kernel ``[in, out]`` -> :class:`QuantizedKernel` of ``kind`` ("nf4" or "int8")."""
    w = np.asarray(jax.device_get(kernel), dtype=np.float32).T  # [out, in]
    if kind == "nf4":
        data = nf4.quantize(w)
    elif kind == "int8":
        data = int8.quantize(w)
    else:
        raise ValueError(f"cannot quantize a kernel to {kind!r}; use 'nf4' or 'int8'")
    return QuantizedKernel({k: jnp.asarray(v) for k, v in data.items()}, kind, tuple(kernel.shape))


def from_gguf_blocks(kind: str, blocks: np.ndarray, d_in: int) -> QuantizedKernel:
    """GGUF rows ``[out, bytes_per_row]`` uint8 of format ``kind`` -> kernel ``[d_in, out]``."""
    size, nbytes = gguf_blocks.FORMATS[kind]
    if d_in % size or blocks.shape[1] != d_in // size * nbytes:
        raise DataError(f"{kind} rows of {blocks.shape[1]} bytes do not hold {d_in} weights")
    return QuantizedKernel({"blocks": jnp.asarray(blocks)}, kind, (d_in, blocks.shape[0]))


def frozen_dot(
    module: nn.Module,
    x: jax.Array,
    features: int,
    init: Any,
    param_dtype: Any,
    dtype: Any,
) -> jax.Array:
    """``x [..., in] · kernel [in, features]`` in the compute ``dtype`` for a Dense ``module``.

    A stored :class:`QuantizedKernel` is dequantized where it is used, in the forward and again
    in the backward (a custom VJP whose only residual is the packed kernel), so a step holds at
    most a layer's float kernels at a time rather than the float base (measured with XLA's
    memory analysis in tests/quant/test_qlora_step.py). Otherwise the ordinary
    ``params/kernel`` in ``param_dtype``.
    """
    shape = (x.shape[-1], features)
    if module.has_variable("params", "kernel"):
        stored = module.get_variable("params", "kernel")
        if isinstance(stored, QuantizedKernel):
            if tuple(stored.shape) != shape:
                raise DataError(
                    f"quantized kernel of {module.name} has shape {stored.shape}, the layer "
                    f"needs {shape}; the checkpoint does not match the model config"
                )
            return _dequantize_dot(x.astype(dtype), stored, dtype)
    kernel = module.param("kernel", init, shape, param_dtype)
    return jnp.dot(x.astype(dtype), kernel.astype(dtype))


def _dequantize_dot(x: jax.Array, q: QuantizedKernel, dtype: Any) -> jax.Array:
    """``x · dequantize(q)``; its VJP dequantizes again (only the packed ``q`` is a residual)."""
    return _qdot(x.astype(dtype), q)


@jax.custom_vjp
def _qdot(x: jax.Array, q: QuantizedKernel) -> jax.Array:
    return jnp.dot(x, q.dequantize(x.dtype, after=x))


def _qdot_fwd(x: jax.Array, q: QuantizedKernel) -> tuple[jax.Array, QuantizedKernel]:
    return _qdot(x, q), q


def _qdot_bwd(q: QuantizedKernel, g: jax.Array) -> tuple[jax.Array, QuantizedKernel]:
    dx = jnp.dot(g, q.dequantize(g.dtype, after=g).T)
    zeros = jax.tree.map(  # the frozen kernel gets no gradient (integer leaves: float0)
        lambda a: (
            np.zeros(a.shape, jax.dtypes.float0)
            if not jnp.issubdtype(a.dtype, jnp.floating)
            else jnp.zeros_like(a)
        ),
        q,
    )
    return dx, zeros


_qdot.defvjp(_qdot_fwd, _qdot_bwd)


def is_quantized(x: Any) -> bool:
    return isinstance(x, QuantizedKernel)


def quantize_params(
    params: Mapping[str, Any], kind: str, lora_modules: Mapping[str, tuple[str, ...]]
) -> dict:
    """Copy of ``params`` with every LoRA-targetable Dense kernel (the modules named in
    ``lora_modules``, e.g. ``self_attn.q_proj``) quantized to ``kind``; embeddings, norms, biases
    and the LM head are left as they are. Quantizes and frees one kernel at a time."""
    suffixes = tuple(lora_modules)

    def walk(node: Mapping[str, Any], path: tuple[str, ...]) -> dict:
        out = {}
        for key, child in node.items():
            if isinstance(child, Mapping):
                out[key] = walk(child, (*path, key))
            elif key == "kernel" and _matches(".".join(path), suffixes) and not is_quantized(child):
                out[key] = quantize_kernel(child, kind)
            else:
                out[key] = child
        return out

    return walk(params, ())


def _matches(module_path: str, suffixes: tuple[str, ...]) -> bool:
    return any(module_path == s or module_path.endswith("." + s) for s in suffixes)


def frozen_bytes(params: Any) -> dict[str, int]:
    """``{"bytes": all frozen bytes, "weights": logical weight count, "quantized_bytes",
    "quantized_weights"}`` (a :class:`QuantizedKernel` counts its packed bytes and its
    ``in·out`` weights)."""
    out = {"bytes": 0, "weights": 0, "quantized_bytes": 0, "quantized_weights": 0}
    for leaf in jax.tree.leaves(params, is_leaf=is_quantized):
        if is_quantized(leaf):
            out["quantized_bytes"] += leaf.nbytes
            out["quantized_weights"] += leaf.size
            out["bytes"] += leaf.nbytes
            out["weights"] += leaf.size
        else:
            out["bytes"] += int(np.dtype(leaf.dtype).itemsize * np.prod(leaf.shape))
            out["weights"] += int(np.prod(leaf.shape))
    return out


@dataclasses.dataclass(frozen=True)
class KeptBlocks:
    """One GGUF Linear weight kept in its blocks, standing in the HF state dict for the float
    tensor: ``shape`` is the HF state-dict shape (``[out, in]``; GPT-2 Conv1D ``[in, out]``),
    ``blocks`` the GGUF rows ``[out, bytes_per_row]``."""

    kind: str
    blocks: np.ndarray
    shape: tuple[int, int]
    d_in: int

    def to_kernel(self) -> QuantizedKernel:
        return from_gguf_blocks(self.kind, self.blocks, self.d_in)
