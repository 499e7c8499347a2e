"""Run names and target labels, derived from what a run adapts (never from a typed label).

The target label is the canonical, comma-joined list of the short module names adapted, in the
order q,k,v,o,gate,up,down: ``q,v``, ``q,k,v,o``, ``q,k,v,o,gate,up,down``. At compose time
(the run name and dir) it is derived from ``lora.targets`` alone: presets and short names expand
to their modules; anything else (regexes, PEFT module names) is labelled by the list itself.
After targeting, ``label_of_resolved`` labels the modules actually adapted; results.json, W&B
and the report use that one (``mlp`` on GPT-2, which has no gate, is ``up,down``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from lora_jax.lora.targeting import PRESETS, SHORT_NAMES, Target


def target_label(names: Iterable[str]) -> str:
    """{"v", "q"} -> "q,v" (short names in canonical order, others after, alphabetically)."""
    order = {n: i for i, n in enumerate(SHORT_NAMES)}
    return ",".join(sorted(set(names), key=lambda n: (order.get(n, len(order)), n)))


def label_of_targets(targets: str | Sequence[str]) -> str:
    """Compose-time label of ``lora.targets``: "qv" -> "q,v", ["up", "q"] -> "q,up",
    ["h\\.0\\.attn\\..*"] -> the list itself (no model at hand to resolve a regex)."""
    items = [targets] if isinstance(targets, str) else [str(t) for t in targets]
    if all(t in PRESETS or t in SHORT_NAMES for t in items):
        return target_label(n for t in items for n in PRESETS.get(t, (t,)))
    return ",".join(items).replace("/", "_")


def label_of_resolved(targets: Sequence[Target]) -> str:
    """The label of the blocks a run adapts (from ``lora_jax.lora.resolve``'s Target list)."""
    return target_label(t.name for t in targets)


def fmt_num(x: Any) -> str:
    """8.0 -> "8", 0.5 -> "0.5" (run names: a8, not a8.0)."""
    if isinstance(x, float) and x.is_integer():
        return str(int(x))
    return f"{x:g}" if isinstance(x, float) else str(x)


def run_name(
    model: str,
    task: str,
    targets: Any,
    r: int,
    alpha: float,
    scaling: str,
    seed: int,
    method: str = "lora",
    variant: str = "lora",
    init: str = "kaiming",
    loraplus_lr_ratio: float | None = None,
) -> str:
    """``smollm2-135m-e2e-q,v-r8-a8-s0``, with ``-rslora`` for rsLoRA scaling and the variant
    when it is not plain LoRA (``-dora``; ``-pissa`` / ``-olora`` for those data-dependent
    inits; ``-loraplus16`` for LoRA+ with B's lr 16× A's): runs of a variants sweep get
    distinct names. ``smollm2-135m-e2e-full-s0`` for full fine-tuning (``method=full``: no
    targets, r or α)."""
    if method == "full":
        return f"{model}-{task}-full-s{seed}"
    tail = "" if scaling == "standard" else f"-{scaling}"
    if variant != "lora":
        tail += f"-{variant}"
    if init.startswith(("pissa", "olora")):
        tail += f"-{init.split('_')[0]}"
    if loraplus_lr_ratio is not None:
        tail += f"-loraplus{fmt_num(float(loraplus_lr_ratio))}"
    label = label_of_targets(list(targets) if not isinstance(targets, str) else targets)
    return f"{model}-{task}-{label}-r{r}-a{fmt_num(alpha)}{tail}-s{seed}"
