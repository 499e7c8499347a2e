"""Targeting: resolve a LoraConfig against a model's params to the list of adapted blocks.

Resolution happens once, up front, on plain data: the frozen params tree and the model's
module map (``{"attn.c_attn": ("q", "k", "v"), ...}``: module path after the layer scope →
the names of its equal column blocks; defined once per architecture in lora_jax/models).
Errors list what exists.

Matching rules (those of HF PEFT's ``check_target_module_exists``, over our module ids, which are
PEFT's module names without the ``transformer.``/``model.`` prefix: ``h.0.attn.c_attn``,
``layers.0.self_attn.q_proj``):

- a preset or short name (``qv``, ``attn``, ``q``, ``gate`` ...) selects blocks by name, in any
  architecture (``q`` is GPT-2's first third of ``c_attn`` and Llama's ``q_proj``);
- a list item that is not one matches a module id exactly or as a suffix after a ``.``
  (``q_proj``, ``c_attn``, ``mlp.c_fc``); for a fused module it may name one block
  (``c_attn.v``). GPT-2's ``c_attn`` named as a module selects the whole fused kernel (q, k, v),
  as PEFT adapts the whole Conv1D; so does Phi-3's ``qkv_proj`` (``gate_up_proj``: gate and
  up), whose parts are separate modules here (``registry.FUSED``);
- one string that is not a preset is a regex that must fullmatch the module id (or the block
  id ``<module id>.<block>``), PEFT's ``re.fullmatch(target_modules, key)``;
- ``exclude_modules``: the same rules (list: names/suffixes; string: regex), applied after;
- ``layers`` (PEFT's ``layers_to_transform``): keep only blocks of these layer indices.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from typing import Any

from lora_jax.errors import ConfigError
from lora_jax.lora.config import PRESETS, SHORT_NAMES, LoraConfig

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
    fused_id: str | None = None  # the HF module it is part of (Phi-3's layers.0.self_attn.qkv_proj)

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
    dora: bool = False  # lora.variant=dora: a trainable magnitude per output column

    @property
    def num_params(self) -> int:
        return (self.d_in + self.d_out) * self.r + (self.d_out if self.dora else 0)


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
    fused_of = getattr(lora_modules, "fused", {})  # registry.ModuleMap (Phi-3)

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
            fused = next((f for f, parts in fused_of.items() if suffix in parts), None)
            fused_id = None
            if fused is not None:
                fused_id = module_id(path[: i + 1] + tuple(fused.split(".")))
            for b, name in enumerate(blocks):
                found.append(
                    Candidate(path, name, int(m["idx"]), b, len(blocks), d_in, width, fused_id)
                )
            return

    walk(params, ())
    return found


def suffix_match(pattern: str, key: str) -> bool:
    """PEFT's rank_pattern rule: the pattern matches the whole id or a suffix after a '.'."""
    return re.fullmatch(rf"(?:.*\.)?(?:{pattern})", key) is not None


def _pattern_value(patterns: Mapping[str, Any], cand: Candidate) -> Any:
    for pat, value in patterns.items():
        if suffix_match(pat, cand.id) or suffix_match(pat, cand.module_id):
            return value
    return None


def _is_suffix(name: str, key: str) -> bool:
    """PEFT's list rule: ``key == name`` or ``key`` ends with ``"." + name``."""
    return key == name or key.endswith("." + name)


def _select(
    spec: str | tuple[str, ...], cands: list[Candidate], field: str, help_text: str
) -> set[tuple[tuple[str, ...], str]]:
    """The (path, block) pairs ``spec`` (a targets / exclude_modules value) matches."""
    if isinstance(spec, str) and spec not in PRESETS:
        rx = re.compile(spec)  # validated by LoraConfig
        hit = [c for c in cands if rx.fullmatch(c.module_id) or rx.fullmatch(c.id)
               or (c.fused_id is not None and rx.fullmatch(c.fused_id))]  # fmt: skip
        if not hit:
            raise ConfigError(
                f"{field}={spec!r} is a regex (a single string that is not a preset) and "
                f"fullmatches no module id; for PEFT-style suffix names pass a list, e.g. "
                f"[{spec}]. {help_text}"
            )
        return {(c.path, c.name) for c in hit}
    available = {c.name for c in cands}
    out: set[tuple[tuple[str, ...], str]] = set()
    for item in (spec,) if isinstance(spec, str) else spec:
        if item in PRESETS:
            if item in SHORT_NAMES and item not in available:
                raise ConfigError(f"{field} names {item!r}, which this model lacks; {help_text}")
            hit = [c for c in cands if c.name in PRESETS[item]]
        else:
            hit = [c for c in cands if _is_suffix(item, c.module_id) or _is_suffix(item, c.id)
                   or (c.fused_id is not None and _is_suffix(item, c.fused_id))]  # fmt: skip
        if not hit:
            raise ConfigError(
                f"{field} item {item!r} matches no module: list items are short names, presets "
                f"or module names matched exactly or by '.'-suffix as in PEFT (a regex must be "
                f"the whole value, a single string); {help_text}"
            )
        out.update((c.path, c.name) for c in hit)
    return out


def resolve(
    cfg: LoraConfig, params: Mapping[str, Any], lora_modules: Mapping[str, tuple[str, ...]]
) -> list[Target]:
    """The blocks ``cfg`` adapts in a model with these params, with their rank and scale."""
    cands = candidates(params, lora_modules)
    if not cands:
        raise ConfigError(
            "this model has no LoRA-targetable modules: its params hold none of "
            f"{sorted(lora_modules)} under a layer scope"
        )
    available = sorted({c.name for c in cands}, key=lambda n: (SHORT_NAMES + (n,)).index(n))
    layer0 = sorted({c.module_id for c in cands if c.layer == cands[0].layer})
    help_text = (
        f"targetable short names in this model: {', '.join(available)}; presets: "
        f"{', '.join(p for p in PRESETS if p not in SHORT_NAMES)}; module ids such as "
        f"{', '.join(layer0)}"
    )
    targets = cfg.targets if isinstance(cfg.targets, str) else tuple(cfg.targets)
    selected = _select(targets, cands, "lora.targets", help_text)
    if cfg.exclude_modules is not None:
        excl = cfg.exclude_modules
        excl = excl if isinstance(excl, str) else tuple(excl)
        selected -= _select(excl, cands, "lora.exclude_modules", help_text)

    n_layers = max(c.layer for c in cands) + 1
    layer_list = cfg.layer_list
    if layer_list is not None:
        bad = [i for i in layer_list if not 0 <= i < n_layers]
        if bad:
            raise ConfigError(
                f"lora.layers holds {bad}, out of range: this model has {n_layers} layers "
                f"(valid indices 0..{n_layers - 1})"
            )
    layers = set(layer_list) if layer_list is not None else None

    out: list[Target] = []
    for c in cands:
        if (c.path, c.name) not in selected or (layers is not None and c.layer not in layers):
            continue
        r = _pattern_value(cfg.rank_pattern, c) or cfg.r
        if r > min(c.d_in, c.d_out):
            raise ConfigError(
                f"lora rank r={r} does not fit {c.id}: its block is {c.d_in}x{c.d_out}, so r must "
                f"be <= {min(c.d_in, c.d_out)} (set lora.r or lora.rank_pattern lower)"
            )
        alpha = cfg.alpha_for(r, _pattern_value(cfg.alpha_pattern, c))
        out.append(
            Target(
                **dataclasses.asdict(c),
                r=r,
                alpha=alpha,
                scale=cfg.scale(r, alpha),
                dora=cfg.variant == "dora",
            )
        )
    if not out:
        raise ConfigError(
            f"lora.targets {cfg.targets!r} with lora.exclude_modules={cfg.exclude_modules!r} "
            f"and lora.layers={cfg.layers!r} selects nothing"
        )
    return out
