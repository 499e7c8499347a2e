"""The precision policy of a run (config group ``precision=``): which dtype the frozen base is
stored in and which dtype the model computes in, resolved against the backend.

=========  ==========================  ==========================================
policy     frozen base storage         compute (matmuls, activations)
=========  ==========================  ==========================================
auto       fp32 on CPU, bf16 on GPU/TPU  fp32 on CPU, bf16 on GPU/TPU
fp32       fp32                        fp32
bf16       bf16                        bf16
=========  ==========================  ==========================================

Whatever the policy, the LoRA factors A and B and the optimizer state are float32 (they are
created fp32 by :func:`lora_jax.lora.init` and the update is computed against them; the
layer casts them to the compute dtype only inside the matmul), and the logits and the loss are
float32 (the models' ``finish_call`` and :func:`lora_jax.train.step.lm_loss`). ``model.dtype`` /
``model.param_dtype`` override the policy when set (null = follow it).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax

from lora_jax.errors import ConfigError

POLICIES = ("auto", "fp32", "bf16")
MATMUL = ("default", "high", "highest", "bfloat16", "tensorfloat32", "float32")
_NAMES = {"float32": "float32", "fp32": "float32", "bfloat16": "bfloat16", "bf16": "bfloat16",
          "float16": "float16", "fp16": "float16"}  # fmt: skip


@dataclasses.dataclass(frozen=True)
class Precision:
    compute: str  # "float32" | "bfloat16" | "float16"
    base: str  # storage dtype of the frozen base
    backend: str
    matmul: str | None = None  # jax_default_matmul_precision; None = the backend's default

    def apply(self) -> None:
        """Set ``jax_default_matmul_precision`` when the policy names one."""
        if self.matmul is not None:
            jax.config.update("jax_default_matmul_precision", self.matmul)

    def describe(self) -> str:
        return (
            f"precision: base {self.base}, compute {self.compute}, LoRA + optimizer float32, "
            f"logits/loss float32, matmul precision {self.matmul or 'default'} "
            f"(backend {self.backend})"
        )


def _name(value: str, key: str) -> str:
    if value not in _NAMES:
        raise ConfigError(f"{key}={value!r} is not a dtype; use one of {sorted(set(_NAMES))}")
    return _NAMES[value]


def resolve(
    policy: Any, model_dtype: str | None = None, model_param_dtype: str | None = None,
    backend: str | None = None,
) -> Precision:  # fmt: skip
    """``policy``: the ``precision`` config node (``compute``, ``base``: auto | a dtype) or a
    policy name. ``model_dtype`` / ``model_param_dtype`` (``model.dtype``/``param_dtype``) win
    when given. ``backend`` defaults to ``jax.default_backend()``."""
    backend = backend or jax.default_backend()
    if isinstance(policy, str):
        if policy not in POLICIES:
            raise ConfigError(f"precision={policy!r} is unknown; use one of {', '.join(POLICIES)}")
        policy = {"compute": policy, "base": policy}
    accel = backend != "cpu"
    auto = "bfloat16" if accel else "float32"
    compute = policy["compute"]
    base = policy["base"]
    compute = auto if compute == "auto" else _name(compute, "precision.compute")
    base = auto if base == "auto" else _name(base, "precision.base")
    if model_dtype is not None:
        compute = _name(model_dtype, "model.dtype")
    if model_param_dtype is not None:
        base = _name(model_param_dtype, "model.param_dtype")
    matmul = policy.get("matmul") if hasattr(policy, "get") else None
    if matmul is not None and matmul not in MATMUL:
        raise ConfigError(f"precision.matmul={matmul!r} is unknown; use one of {', '.join(MATMUL)}")
    return Precision(compute=compute, base=base, backend=backend, matmul=matmul)
