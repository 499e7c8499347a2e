"""Row-wise absmax int8 (LLM.int8 without outliers, Dettmers et al. 2022, arXiv 2208.07339):
bitsandbytes' ``int8_vectorwise_quant`` / ``int8_vectorwise_dequant`` (backends/default/ops.py,
threshold 0). Rows are the output features of the ``[out, in]`` weight."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def quantize(w_out_in: np.ndarray) -> dict[str, np.ndarray]:
    """``w: [out, in]`` -> ``{"q": int8 [out, in], "row_absmax": fp32 [out]}``."""
    w = np.asarray(w_out_in, dtype=np.float32)
    stats = np.abs(w).max(axis=1)
    q = np.rint(w * (np.float32(127.0) / stats[:, None]))  # torch.round: half to even
    return {"q": np.nan_to_num(q).astype(np.int8), "row_absmax": stats.astype(np.float32)}


def dequantize(data: dict[str, jax.Array]) -> jax.Array:
    """Inverse of :func:`quantize`: fp32 ``[out, in]`` (``q · absmax / 127``)."""
    q = data["q"].astype(jnp.float32)
    return q * data["row_absmax"][:, None] * jnp.float32(7.874015718698502e-3)
