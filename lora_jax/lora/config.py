"""LoraConfig: what to adapt, at which rank and scale. Field names follow the issue tracker's
vocabulary, with HF PEFT's equivalents noted (``r``, ``lora_alpha`` → ``alpha``,
``target_modules`` → ``targets``, ``exclude_modules``, ``layers_to_transform`` → ``layers``,
``lora_dropout`` → ``dropout``, ``init_lora_weights`` → ``init``, ``use_rslora`` →
``scaling="rslora"``, ``rank_pattern``, ``alpha_pattern``). Values mean what they mean in PEFT;
see :mod:`lora_jax.lora.targeting` for the matching rules."""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

from lora_jax.errors import ConfigError
from lora_jax.ranges import CHOICES, check_value

INITS = CHOICES["lora.init"]
# Presets and short names: one source of truth, read by targeting. "attn" = Wq,Wk,Wv,Wo (the
# paper's Table 5/6 widest row); "mlp" = the feed-forward projections (GPT-2 has no gate).
SHORT_NAMES = ("q", "k", "v", "o", "gate", "up", "down")
PRESETS: dict[str, tuple[str, ...]] = {
    **{n: (n,) for n in SHORT_NAMES},
    "qv": ("q", "v"),
    "qk": ("q", "k"),
    "attn": ("q", "k", "v", "o"),
    "mlp": ("gate", "up", "down"),
    "all": SHORT_NAMES,
}
# PEFT LoraConfig field -> ours, for the error a PEFT-style key gets.
PEFT_NAMES = {
    "lora_alpha": "alpha",
    "target_modules": "targets",
    "layers_to_transform": "layers",
    "lora_dropout": "dropout",
    "init_lora_weights": "init",
    "use_rslora": "scaling",
    "use_dora": "variant",
}
SCALINGS = CHOICES["lora.scaling"]


@dataclasses.dataclass(frozen=True)
class LoraConfig:
    """LoRA hyperparameters.

    r: rank (> 0). alpha: scale numerator, a constant that does not follow r. Default 8, PEFT's
    ``LoraConfig.lora_alpha`` default; the paper also keeps α fixed as r varies (Hu et al.
    2021, §4.1: "we simply set α to the first r we try and do not tune it"). Set alpha = r
    explicitly for scale 1.
    targets: a preset or short name ("q", "k", "v", "o", "gate", "up", "down", "qv", "qk",
    "attn", "mlp", "all"); a list of short names and/or PEFT ``target_modules`` names, which
    match a module id exactly or as a suffix after a "." (``q_proj``, ``c_attn``,
    ``mlp.c_fc``); or one string that is not a preset: a regex that must fullmatch the module
    id (``h.0.attn.c_attn``, ``layers.3.self_attn.q_proj``: no ``transformer.``/``model.``
    prefix), PEFT's rule for a str ``target_modules``. GPT-2's fused ``c_attn`` named as a
    module selects all three of its blocks (q, k, v); select one block with its short name
    or as ``c_attn.q``.
    exclude_modules: PEFT's: a list (short names, or exact-or-suffix names) or a regex string;
    what matches is not adapted.
    layers: PEFT's ``layers_to_transform``: an int or a list of layer indices (None = all);
    like PEFT, not allowed with a regex-string ``targets`` (put the layer in the regex).
    dropout: on the LoRA input path only.
    init: "kaiming" (the default, PEFT's init_lora_weights=True and the original loralib's:
    A ~ kaiming_uniform(a=√5) over fan_in = in, i.e. U(±1/√in), whatever r) or "gaussian"
    (PEFT's init_lora_weights="gaussian": A ~ N(0, 1/r²)); B = 0 always, so ΔW = 0 at step 0.
    The choice changes how the first update scales with r: with α/r scaling, ‖ΔW‖_F after one
    Adam step goes as r^-1/2 under kaiming and r^-3/2 under gaussian
    (tests/lora/test_init_scale.py).
    PEFT's data-dependent inits (the frozen base is not modified: the adapter keeps its initial
    factors ``a0``, ``b0`` as frozen data and the layer adds ``-s·(x·a0)·b0``, which is
    ``x·W_res`` with PEFT's residual ``W_res = W - s·B0·A0``; lora_jax/lora/layer.py):
    "pissa" (Meng et al. 2024; PEFT ``init_lora_weights="pissa"``): A, B from the top-r SVD of
    W, ``A = diag(√(S/s))·Uᵀ``, ``B = V·diag(√(S/s))``; "pissa_niter_<K>" the same from a
    randomized SVD with K subspace iterations (PEFT's fast form; the random draw is ours, so it
    equals PEFT's only up to that draw); "olora" (Büyükakyüz 2024; PEFT ``"olora"``): A, B from
    W's QR, ``B = Q[:, :r]``, ``A = R[:r]``.
    variant: "lora" or "dora" (Liu et al. 2024; PEFT ``use_dora=True``): a trainable magnitude
    ``m`` per output column, ``y = m/‖W + s·A·B‖_col · (x·W + s·(x·A)·B) + bias``, the norm
    detached from the gradient as in PEFT (DoRA §4.3) and computed without forming W + s·A·B.
    scaling: "standard" (α/r, the paper) or "rslora" (α/√r, Kalajdzievski 2023).
    rank_pattern / alpha_pattern: {regex: value} overrides per module, matched like PEFT's
    (the regex must match a suffix of the module id ending at a "." boundary).
    """

    r: int = 8
    alpha: float = 8.0  # PEFT LoraConfig.lora_alpha default; constant in r as in [P §4.1]
    targets: str | Sequence[str] = "qv"
    exclude_modules: str | Sequence[str] | None = None
    layers: int | Sequence[int] | None = None
    dropout: float = 0.0
    # PEFT LoraConfig.init_lora_weights=True (huggingface/peft src/peft/tuners/lora/config.py)
    init: str = "kaiming"
    variant: str = "lora"  # "dora": PEFT's use_dora=True
    scaling: str = "standard"
    rank_pattern: Mapping[str, int] = dataclasses.field(default_factory=dict)
    alpha_pattern: Mapping[str, float] = dataclasses.field(default_factory=dict)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.alpha is None:
            raise ConfigError(
                "lora.alpha is null; it no longer means alpha = r (that ties the scale to the "
                "rank). Give a number: 8 (the default, PEFT's), or lora.alpha=<r> for scale 1"
            )
        # the same table and messages as the app's check before loading (lora_jax.ranges)
        for key in ("r", "alpha", "dropout", "init", "variant", "scaling"):
            check_value(f"lora.{key}", getattr(self, key))
        if isinstance(self.targets, str):
            if not self.targets:
                raise ConfigError(
                    "lora.targets is empty; use a preset such as 'qv' or a list of names"
                )
        elif not self.targets:
            raise ConfigError("lora.targets is an empty list; name at least one module")
        if isinstance(self.targets, str) and not _is_name(self.targets):
            _check_regex("lora.targets", self.targets)
            if self.layers is not None:
                raise ConfigError(
                    f"lora.layers cannot be combined with the regex lora.targets={self.targets!r} "
                    "(as in PEFT); put the layer indices in the regex, e.g. "
                    r"'h\.(0|1)\.attn\.c_attn', or pass targets as a list"
                )
        if isinstance(self.exclude_modules, str):
            if not self.exclude_modules:
                raise ConfigError("lora.exclude_modules is an empty string; use null for none")
            if not _is_name(self.exclude_modules):
                _check_regex("lora.exclude_modules", self.exclude_modules)
        for key, value in self.rank_pattern.items():
            _check_regex("lora.rank_pattern", key)
            _check_rank(f"lora.rank_pattern[{key!r}]", value)
        for key, value in self.alpha_pattern.items():
            _check_regex("lora.alpha_pattern", key)
            if not (_is_number(value) and value > 0):
                raise ConfigError(f"lora.alpha_pattern[{key!r}]={value!r}: must be > 0")
        if self.layers is not None:
            for i in self.layer_list:
                if not isinstance(i, int) or isinstance(i, bool):
                    raise ConfigError(f"lora.layers must hold integer layer indices; got {i!r}")

    @property
    def target_list(self) -> tuple[str, ...]:
        return (self.targets,) if isinstance(self.targets, str) else tuple(self.targets)

    @property
    def layer_list(self) -> tuple[int, ...] | None:
        """``layers`` as a tuple (an int means that one layer, as PEFT's layers_to_transform)."""
        if self.layers is None:
            return None
        return (self.layers,) if isinstance(self.layers, int) else tuple(self.layers)

    def alpha_for(self, r: int, alpha: float | None = None) -> float:
        """The α of a module of rank ``r``: its alpha_pattern value if any, else ``alpha``
        (never derived from r)."""
        return float(alpha if alpha is not None else self.alpha)

    def scale(self, r: int, alpha: float) -> float:
        return alpha / math.sqrt(r) if self.scaling == "rslora" else alpha / r

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> LoraConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            hints = [f"{k!r} is called {PEFT_NAMES[k]!r} here" for k in unknown if k in PEFT_NAMES]
            raise ConfigError(
                f"unknown lora config keys {unknown}; allowed: {sorted(names)}"
                + (f" ({'; '.join(hints)})" if hints else "")
            )
        d = dict(d)
        for key in ("rank_pattern", "alpha_pattern"):
            if d.get(key) is None:
                d[key] = {}
            d[key] = dict(d[key])
        if d.get("layers") is not None and not isinstance(d["layers"], int):
            d["layers"] = tuple(d["layers"])
        for key in ("targets", "exclude_modules"):
            if d.get(key) is not None and not isinstance(d[key], str):
                d[key] = tuple(d[key])
        return cls(**d)


def _is_name(item: str) -> bool:
    """A preset or short name (everything else in a string ``targets`` is a regex)."""
    return item in PRESETS


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _check_rank(field: str, r: Any) -> None:
    """``lora.rank_pattern['q']=0: must be >= 1``: lora_jax.train.checks' message for it."""
    if not isinstance(r, int) or isinstance(r, bool):
        raise ConfigError(f"{field}={r!r}: must be an integer >= 1")
    if r <= 0:
        raise ConfigError(f"{field}={r!r}: must be >= 1")


def _check_regex(field: str, pattern: str) -> None:
    try:
        re.compile(pattern)
    except re.error as e:
        raise ConfigError(f"{field} key {pattern!r} is not a valid regex: {e}") from None
