"""The allowed values of a run's config: one table and one message format.

The app checks a whole config against it before any work (lora_jax.train.checks.check_config,
every problem listed at once), and the library checks the same keys where it takes them
(LoraConfig, the optimizer), so one bad value gets one message wherever it is caught:
``lora.dropout=1.5: must be in [0, 1)``. Types and key names are checked earlier, at
composition, by the structured schema (lora_jax.run.schema).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from lora_jax.errors import ConfigError

# the choices of the string-valued keys (the one source: lora_jax.lora.config uses these)
CHOICES: dict[str, tuple[str, ...]] = {
    # + "pissa_niter_<K>" (PEFT's fast PiSSA: a randomized SVD with K subspace iterations)
    "lora.init": ("gaussian", "kaiming", "pissa", "olora"),
    "lora.variant": ("lora", "dora"),
    "lora.scaling": ("standard", "rslora"),
    "optim.name": ("adamw",),
    "optim.schedule": ("linear", "cosine", "constant"),
    "method": ("lora", "full"),
    "data.pack": ("rows", "step"),
}
# keys that take true, false or auto
SWITCHES: dict[str, str] = {"data.packing": "auto = packed rows unless lora.dropout > 0"}


def _pos(v: Any) -> bool:
    return v > 0


def _nonneg(v: Any) -> bool:
    return v >= 0


def _ge1(v: Any) -> bool:
    return v >= 1


# (dotted key, may be null, predicate, the allowed range in words)
RULES: list[tuple[str, bool, Callable[[Any], bool], str]] = [
    ("optim.lr", False, _pos, "> 0"),
    ("optim.loraplus_lr_ratio", True, _pos, "> 0 (LoRA+: B's lr / A's), or null for plain LoRA"),
    ("optim.warmup_steps", False, _nonneg, ">= 0"),
    ("optim.label_smoothing", False, lambda v: 0 <= v < 1, "in [0, 1)"),
    ("optim.grad_accum", False, _ge1, ">= 1"),
    ("optim.weight_decay", False, _nonneg, ">= 0"),
    ("optim.b1", False, lambda v: 0 <= v < 1, "in [0, 1)"),
    ("optim.b2", False, lambda v: 0 <= v < 1, "in [0, 1)"),
    ("optim.eps", False, _pos, "> 0"),
    ("optim.grad_clip", True, _pos, "> 0, or null for no clipping"),
    ("trainer.batch_size", False, _ge1, ">= 1"),
    ("trainer.epochs", True, _pos, "> 0, or null to use trainer.max_steps"),
    ("trainer.max_steps", True, _ge1, ">= 1, or null to use trainer.epochs"),
    ("trainer.log_every", False, _ge1, ">= 1 (steps)"),
    ("trainer.eval_every", True, _ge1, ">= 1 (steps), or null for the end only"),
    ("trainer.ckpt_every", True, _ge1, ">= 1 (steps), or null for the final checkpoint only"),
    ("trainer.ckpt_keep", False, _ge1, ">= 1 (the final checkpoint is always kept)"),
    ("trainer.stop_after", True, _ge1, ">= 1 (steps), or null"),
    ("task.max_len", False, lambda v: v >= 2, ">= 2 (tokens)"),
    ("task.max_train_examples", True, _ge1, ">= 1, or null for all"),
    ("task.max_eval_items", True, _ge1, ">= 1, or null for all"),
    ("task.decode.num_beams", False, _ge1, ">= 1"),
    ("task.decode.max_new_tokens", False, _ge1, ">= 1"),
    ("task.decode.batch_size", False, _ge1, ">= 1"),
    ("task.decode.no_repeat_ngram_size", False, _nonneg, ">= 0 (0 = off)"),
    ("lora.r", False, _ge1, ">= 1"),
    ("lora.alpha", True, _pos, "> 0, or null for alpha = r"),
    ("lora.dropout", False, lambda v: 0 <= v < 1, "in [0, 1)"),
    ("data.step_multiple", False, _ge1, ">= 1 (tokens)"),
    ("trainer.val_examples", False, _nonneg, ">= 0 (0: no validation)"),
    ("trainer.val_decode_items", False, _nonneg, ">= 0 (0: validation loss only)"),
    ("seed", False, _nonneg, ">= 0"),
]


_BY_KEY = {key: (nullable, ok, allowed) for key, nullable, ok, allowed in RULES}
_INTEGER = {"lora.r", "optim.grad_accum", "optim.warmup_steps", "trainer.batch_size",
            "trainer.max_steps", "trainer.log_every", "trainer.eval_every", "trainer.ckpt_every",
            "trainer.ckpt_keep", "trainer.stop_after", "task.max_len", "task.max_train_examples",
            "task.max_eval_items", "task.decode.num_beams", "task.decode.max_new_tokens",
            "task.decode.batch_size", "task.decode.no_repeat_ngram_size", "seed",
            "trainer.val_examples", "trainer.val_decode_items", "data.step_multiple"}  # fmt: skip


def value_problem(key: str, value: Any) -> str | None:
    """``"key=value: must be ..."`` when ``value`` is not allowed for ``key``, else None (also
    for a key the table does not hold)."""
    if key in SWITCHES:
        ok = value == "auto" or isinstance(value, bool)
        return None if ok else f"{key}={value!r}: must be true, false or auto ({SWITCHES[key]})"
    if key in CHOICES:
        ok = value in CHOICES[key] or (key == "lora.init" and pissa_niter(value) is not None)
        more = " or pissa_niter_<K>" if key == "lora.init" else ""
        return None if ok else f"{key}={value!r}: must be one of {', '.join(CHOICES[key])}{more}"
    if key not in _BY_KEY:
        return None
    nullable, ok, allowed = _BY_KEY[key]
    if value is None:
        return None if nullable else f"{key}=null: must be {allowed}"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return f"{key}={value!r}: must be a number {allowed}"
    if key in _INTEGER and value != int(value):
        return f"{key}={value!r}: must be an integer {allowed}"
    return None if ok(value) else f"{key}={value!r}: must be {allowed}"


def pissa_niter(init: Any) -> int | None:
    """K of ``lora.init="pissa_niter_<K>"`` (K >= 0), else None."""
    m = re.fullmatch(r"pissa_niter_(\d+)", init) if isinstance(init, str) else None
    return int(m.group(1)) if m else None


def check_value(key: str, value: Any) -> None:
    """Raise ConfigError with :func:`value_problem`'s message."""
    problem = value_problem(key, value)
    if problem:
        raise ConfigError(problem)
