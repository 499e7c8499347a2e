"""The optax transform of a run: AdamW with warmup then linear/cosine decay, optional global-norm
clipping and gradient accumulation, applied to the LoRA tree through the trainable/frozen
labels (lora_jax.lora.optim.make_optimizer)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import optax

from lora_jax.errors import ConfigError
from lora_jax.lora import make_optimizer
from lora_jax.ranges import CHOICES, check_value

SCHEDULES = CHOICES["optim.schedule"]


def schedule(lr: float, total_steps: int, warmup_steps: int, kind: str) -> optax.Schedule:
    """Linear warmup from 0 over ``warmup_steps``, then decay to 0 at ``total_steps``
    (the original LoRA code's get_linear_schedule_with_warmup), cosine, or constant."""
    check_value("optim.schedule", kind)  # lora_jax.ranges: the app check's message
    warmup_steps = min(warmup_steps, max(total_steps - 1, 0))
    decay_steps = max(total_steps - warmup_steps, 1)
    if kind == "linear":
        after = optax.linear_schedule(lr, 0.0, decay_steps)
    elif kind == "cosine":
        after = optax.cosine_decay_schedule(lr, decay_steps)
    else:
        after = optax.constant_schedule(lr)
    if warmup_steps == 0:
        return after
    return optax.join_schedules(
        [optax.linear_schedule(0.0, lr, warmup_steps), after], [warmup_steps]
    )


def build_optimizer(
    cfg: Mapping[str, Any], lora: Mapping[str, Any], total_steps: int, every_leaf: bool = False
) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """``total_steps`` counts optimizer updates (after accumulation). The transform updates the
    LoRA tree's A and B (lora_jax.lora.optim labels), or with ``every_leaf`` every leaf of the
    tree it is given (full fine-tuning: the base params)."""
    for key in ("name", "grad_accum"):  # the app check's messages (lora_jax.ranges)
        check_value(f"optim.{key}", cfg[key])
    lr = schedule(cfg["lr"], total_steps, cfg["warmup_steps"], cfg["schedule"])
    parts = []
    if cfg.get("grad_clip"):
        parts.append(optax.clip_by_global_norm(cfg["grad_clip"]))
    parts.append(
        optax.adamw(
            lr, b1=cfg["b1"], b2=cfg["b2"], eps=cfg["eps"], weight_decay=cfg["weight_decay"]
        )
    )
    ratio = cfg.get("loraplus_lr_ratio")
    if ratio is not None and every_leaf:
        raise ConfigError("optim.loraplus_lr_ratio (LoRA+) scales LoRA's B learning rate; "
                          "method=full has no B: set it to null")  # fmt: skip
    tx = (optax.chain(*parts) if every_leaf
          else make_optimizer(optax.chain(*parts), lora, b_lr_ratio=ratio))  # fmt: skip
    if cfg["grad_accum"] > 1:
        tx = optax.MultiSteps(tx, every_k_schedule=cfg["grad_accum"])
    return tx, lr
