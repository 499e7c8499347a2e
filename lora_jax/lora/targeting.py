"""Targeting: resolve a LoraConfig against a model's params to the list of adapted blocks.

Resolution happens once, up front, on plain data: the frozen params tree and the model's
module map (``{"attn.c_attn": ("q", "k", "v"), ...}``: module path after the layer scope →
the names of its equal column blocks; defined once per architecture in lora_jax/models).
Errors list what exists.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from typing import Any

from lora_jax.lora.config import LoraConfig

# One source of truth for presets. "attn" = Wq,Wk,Wv,Wo (paper Table 6's widest row);
# "mlp" = the feed-forward projections (GPT-2 has no gate, so there it is up, down).
PRESETS: dict[str, tuple[str, ...]] = {
    "q": ("q",),
    "k": ("k",),
    "v": ("v",),
    "o": ("o",),
    "qv": ("q", "v"),
    "qk": ("q", "k"),
    "attn": ("q", "k", "v", "o"),
    "mlp": ("gate", "up", "down"),
    "all": ("q", "k", "v", "o", "gate", "up", "down"),
}
SHORT_NAMES = ("q", "k", "v", "o", "gate", "up", "down")

_LAYER_SCOPE = re.compile(r"^(?P<base>.+)_(?P<idx>\d+)$")


@dataclasses.dataclass(frozen=True)
class Candidate:
    """One targetable column block of one kernel. ``path``: the module scope in the params
    tree, e.g. ("h_3", "attn", "c_attn"); ``block``/``n_blocks``: its column block."""

    path: tuple[str, ...]
    name: str
    layer: int
    block: int
    n_blocks: int
    d_in: int
    d_out: int

    @property
    def module_id(self) -> str:
        return module_id(self.path)

    @property
    def id(self) -> str:
        return f"{self.module_id}.{self.name}"


@dataclasses.dataclass(frozen=True)
class Target(Candidate):
    """An adapted block: a candidate with its rank, alpha and scale."""

    r: int = 0
    alpha: float = 0.0
    scale: float = 0.0

    @property
    def num_params(self) -> int:
        return (self.d_in + self.d_out) * self.r


def module_id(path: tuple[str, ...]) -> str:
    """("h_3", "attn", "c_attn") -> "h.3.attn.c_attn" (the dotted form users write)."""
    out = []
    for seg in path:
        m = _LAYER_SCOPE.match(seg)
        out.append(f"{m['base']}.{m['idx']}" if m else seg)
    return ".".join(out)


def candidates(
    params: Mapping[str, Any], lora_modules: Mapping[str, tuple[str, ...]]
) -> list[Candidate]:
    """Every targetable block of every layer, in params order."""
    found: list[Candidate] = []

    def walk(node: Mapping[str, Any], path: tuple[str, ...]) -> None:
        if "kernel" in node and not isinstance(node["kernel"], Mapping):
            _add(node["kernel"], path)
        for key, child in node.items():
            if isinstance(child, Mapping):
                walk(child, path + (key,))

    def _add(kernel: Any, path: tuple[str, ...]) -> None:
        for i, seg in enumerate(path):
            m = _LAYER_SCOPE.match(seg)
            if m is None:
                continue
            suffix = ".".join(path[i + 1 :])
            blocks = lora_modules.get(suffix)
            if blocks is None:
                return
            d_in, d_out = kernel.shape
            width = d_out // len(blocks)
            for b, name in enumerate(blocks):
                found.append(Candidate(path, name, int(m["idx"]), b, len(blocks), d_in, width))
            return

    walk(params, ())
    return found


def _suffix_match(pattern: str, key: str) -> bool:
    """PEFT's rank_pattern rule: the pattern matches the whole id or a suffix after a '.'."""
    return re.fullmatch(rf"(?:.*\.)?(?:{pattern})", key) is not None


def _pattern_value(patterns: Mapping[str, Any], cand: Candidate) -> Any:
    for pat, value in patterns.items():
        if _suffix_match(pat, cand.id) or _suffix_match(pat, cand.module_id):
            return value
    return None


def resolve(
    cfg: LoraConfig, params: Mapping[str, Any], lora_modules: Mapping[str, tuple[str, ...]]
) -> list[Target]:
    """The blocks ``cfg`` adapts in a model with these params, with their rank and scale."""
    cands = candidates(params, lora_modules)
    if not cands:
        raise ValueError(
            "this model has no LoRA-targetable modules: its params hold none of "
            f"{sorted(lora_modules)} under a layer scope"
        )
    available = sorted({c.name for c in cands}, key=lambda n: (SHORT_NAMES + (n,)).index(n))
    layer0 = sorted({c.module_id for c in cands if c.layer == cands[0].layer})
    help_text = (
        f"targetable short names in this model: {', '.join(available)}; presets: "
        f"{', '.join(PRESETS)}; or regexes over module paths such as {', '.join(layer0)}"
    )
    selected: set[tuple[tuple[str, ...], str]] = set()
    for item in cfg.target_list:
        if item in PRESETS or item in SHORT_NAMES:
            names = PRESETS.get(item, (item,))
            hit = [c for c in cands if c.name in names]
            if not hit:
                raise ValueError(
                    f"lora.targets {item!r} matches nothing in this model; {help_text}"
                )
            if item in SHORT_NAMES and item not in available:
                raise ValueError(
                    f"lora.targets names {item!r}, which this model lacks; {help_text}"
                )
        else:
            try:
                rx = re.compile(item)
            except re.error as e:
                raise ValueError(
                    f"lora.targets item {item!r} is neither a known name nor a valid regex ({e}); {help_text}"
                ) from None
            hit = [c for c in cands if rx.fullmatch(c.module_id) or rx.fullmatch(c.id)]
            if not hit:
                raise ValueError(
                    f"lora.targets item {item!r} is not a known name and as a regex matches no "
                    f"module; {help_text}"
                )
        selected.update((c.path, c.name) for c in hit)

    n_layers = max(c.layer for c in cands) + 1
    if cfg.layers is not None:
        bad = [i for i in cfg.layers if not 0 <= i < n_layers]
        if bad:
            raise ValueError(
                f"lora.layers holds {bad}, out of range: this model has {n_layers} layers "
                f"(valid indices 0..{n_layers - 1})"
            )
    layers = set(cfg.layers) if cfg.layers is not None else None

    out: list[Target] = []
    for c in cands:
        if (c.path, c.name) not in selected or (layers is not None and c.layer not in layers):
            continue
        r = _pattern_value(cfg.rank_pattern, c) or cfg.r
        if r > min(c.d_in, c.d_out):
            raise ValueError(
                f"lora rank r={r} does not fit {c.id}: its block is {c.d_in}x{c.d_out}, so r must "
                f"be <= {min(c.d_in, c.d_out)} (set lora.r or lora.rank_pattern lower)"
            )
        alpha = cfg.alpha_for(r, _pattern_value(cfg.alpha_pattern, c))
        out.append(Target(**dataclasses.asdict(c), r=r, alpha=alpha, scale=cfg.scale(r, alpha)))
    if not out:
        raise ValueError(
            f"lora.targets {list(cfg.target_list)} with lora.layers={cfg.layers} selects nothing"
        )
    return out
