"""What a run prints: the adapted modules, the progress bar, the table of task metrics."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

from lora_jax.console import console

MODULE_ORDER = ["q", "k", "v", "o", "gate", "up", "down"]


def describe_targets(targets: Any) -> str:
    """``layers 0-29 x {q, v}, r=8 alpha=16 scale=2`` for a list of lora_jax.lora.Target."""
    layers = sorted({t.layer for t in targets})
    names = sorted({t.name for t in targets},
                   key=lambda n: MODULE_ORDER.index(n) if n in MODULE_ORDER else len(MODULE_ORDER))  # fmt: skip
    scales = sorted({(t.r, t.alpha, round(t.scale, 6)) for t in targets})
    sc = "; ".join(f"r={r} alpha={a:g} scale={s:g}" for r, a, s in scales)
    span = (
        f"{layers[0]}-{layers[-1]}"
        if layers == list(range(layers[0], layers[-1] + 1))
        else str(layers)
    )
    return f"layers {span} x {{{', '.join(names)}}}, {sc}"


def progress_bar(enabled: bool, total: int) -> Callable[[int | None, str], bool]:
    """``update(n, text) -> drawn``; ``update(None, "")`` closes the bar. Disabled (or nothing
    to do): ``update`` draws nothing and returns False."""
    if not enabled or total <= 0:
        return lambda *_: False
    from tqdm import tqdm

    bar = tqdm(total=total, dynamic_ncols=True, file=sys.stdout)

    def update(n: int | None, text: str) -> bool:
        if n is None:
            bar.close()
            return True
        bar.n = n
        bar.set_postfix_str(text)
        bar.refresh()
        return True

    return update


def print_metrics(metrics: dict) -> None:
    """The task metrics before and after training, and the train loss, as a table."""
    from rich.table import Table

    before, after = metrics.get("eval_before") or {}, metrics.get("eval") or {}
    table = Table(title="task metrics")
    table.add_column("metric")
    if before:
        table.add_column("before", justify="right")
    table.add_column("after", justify="right")
    fmt = lambda v: f"{v:.4f}" if isinstance(v, float) else str(v)
    for k, v in after.items():
        table.add_row(k, *([fmt(before.get(k, ""))] if before else []), fmt(v))
    console.print(table)
    tr = metrics.get("train") or {}
    if tr.get("first_loss") is not None:
        console.print(
            f"train loss {tr['first_loss']:.4f} -> {tr['final_loss']:.4f} over {tr.get('steps')} steps"
        )
