"""LoraConfig: what to adapt, at which rank and scale. Field names follow the issue tracker's
vocabulary, with HF PEFT's equivalents noted (``r``, ``lora_alpha`` → ``alpha``,
``target_modules`` → ``targets``, ``layers_to_transform`` → ``layers``, ``lora_dropout`` →
``dropout``, ``init_lora_weights`` → ``init``, ``use_rslora`` → ``scaling="rslora"``,
``rank_pattern``, ``alpha_pattern``)."""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

INITS = ("gaussian", "kaiming")
SCALINGS = ("standard", "rslora")


@dataclasses.dataclass(frozen=True)
class LoraConfig:
    """LoRA hyperparameters.

    r: rank (> 0). alpha: scale numerator; None means alpha = r (scale 1), as the paper
    recommends (Hu et al. 2021, §4.1: "we simply set α to the first r we try").
    targets: a preset ("q", "k", "v", "o", "qv", "qk", "attn", "mlp", "all"), a list of short
    names (q, k, v, o, gate, up, down), or regexes over module paths such as ``h.0.attn.c_attn``
    (fullmatch on the module path, or on the path + "." + block name for fused blocks).
    layers: optional subset of layer indices. dropout: on the LoRA input path only.
    init: "gaussian" (A ~ N(0, 1/r²), PEFT's init_lora_weights="gaussian") or "kaiming"
    (PEFT's default: kaiming_uniform(a=√5) = U(±1/√in)); B = 0 always, so ΔW = 0 at step 0.
    scaling: "standard" (α/r, the paper) or "rslora" (α/√r, Kalajdzievski 2023).
    rank_pattern / alpha_pattern: {regex: value} overrides per module, matched like PEFT's
    (the regex must match a suffix of the module id ending at a "." boundary).
    """

    r: int = 8
    alpha: float | None = None
    targets: str | Sequence[str] = "qv"
    layers: Sequence[int] | None = None
    dropout: float = 0.0
    init: str = "gaussian"
    scaling: str = "standard"
    rank_pattern: Mapping[str, int] = dataclasses.field(default_factory=dict)
    alpha_pattern: Mapping[str, float] = dataclasses.field(default_factory=dict)
    seed: int = 0

    def __post_init__(self) -> None:
        _check_rank("lora.r", self.r)
        if self.alpha is not None and not (_is_number(self.alpha) and self.alpha > 0):
            raise ValueError(
                f"lora.alpha must be a number > 0 (or null for alpha = r); got {self.alpha!r}"
            )
        if self.init not in INITS:
            raise ValueError(
                f"lora.init={self.init!r} is unknown; allowed values: {', '.join(INITS)}"
            )
        if self.scaling not in SCALINGS:
            raise ValueError(
                f"lora.scaling={self.scaling!r} is unknown; allowed values: {', '.join(SCALINGS)}"
            )
        if not (_is_number(self.dropout) and 0.0 <= self.dropout < 1.0):
            raise ValueError(f"lora.dropout must be in [0, 1); got {self.dropout!r}")
        if isinstance(self.targets, str):
            if not self.targets:
                raise ValueError(
                    "lora.targets is empty; use a preset such as 'qv' or a list of names"
                )
        elif not self.targets:
            raise ValueError("lora.targets is an empty list; name at least one module")
        for key, value in self.rank_pattern.items():
            _check_regex("lora.rank_pattern", key)
            _check_rank(f"lora.rank_pattern[{key!r}]", value)
        for key, value in self.alpha_pattern.items():
            _check_regex("lora.alpha_pattern", key)
            if not (_is_number(value) and value > 0):
                raise ValueError(f"lora.alpha_pattern[{key!r}] must be a number > 0; got {value!r}")
        if self.layers is not None:
            for i in self.layers:
                if not isinstance(i, int) or isinstance(i, bool):
                    raise ValueError(f"lora.layers must hold integer layer indices; got {i!r}")

    @property
    def target_list(self) -> tuple[str, ...]:
        return (self.targets,) if isinstance(self.targets, str) else tuple(self.targets)

    def alpha_for(self, r: int, alpha: float | None = None) -> float:
        return float(alpha if alpha is not None else (self.alpha if self.alpha is not None else r))

    def scale(self, r: int, alpha: float) -> float:
        return alpha / math.sqrt(r) if self.scaling == "rslora" else alpha / r

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> LoraConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown lora config keys {unknown}; allowed: {sorted(names)}")
        d = dict(d)
        for key in ("rank_pattern", "alpha_pattern"):
            if d.get(key) is None:
                d[key] = {}
            d[key] = dict(d[key])
        if d.get("layers") is not None:
            d["layers"] = tuple(d["layers"])
        if d.get("targets") is not None and not isinstance(d["targets"], str):
            d["targets"] = tuple(d["targets"])
        return cls(**d)


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _check_rank(field: str, r: Any) -> None:
    if not isinstance(r, int) or isinstance(r, bool) or r <= 0:
        raise ValueError(f"{field} must be an integer > 0; got {r!r}")


def _check_regex(field: str, pattern: str) -> None:
    try:
        re.compile(pattern)
    except re.error as e:
        raise ValueError(f"{field} key {pattern!r} is not a valid regex: {e}") from None
