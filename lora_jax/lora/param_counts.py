"""Trainable-parameter report: per module kind, in total and as a share of the base model
(like PEFT's print_trainable_parameters, but per module)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

from lora_jax.lora.params import count_params
from lora_jax.lora.targeting import SHORT_NAMES, Target


@dataclasses.dataclass(frozen=True)
class Row:
    name: str  # short module name: q, k, v, o, gate, up, down
    layers: int
    ranks: tuple[int, ...]
    scales: tuple[float, ...]
    shape: str  # "d_in x d_out" of one block
    trainable: int


@dataclasses.dataclass(frozen=True)
class ParamReport:
    rows: tuple[Row, ...]
    trainable: int
    base: int

    @property
    def percent(self) -> float:
        return 100.0 * self.trainable / self.base if self.base else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "trainable": self.trainable,
            "base": self.base,
            "percent": self.percent,
            "per_module": {r.name: r.trainable for r in self.rows},
        }

    def __str__(self) -> str:
        head = f"{'module':<8}{'layers':>7}{'r':>10}{'scale':>12}{'block':>14}{'trainable':>14}"
        lines = [head, "-" * len(head)]
        for r in self.rows:
            ranks = ",".join(map(str, r.ranks))
            scales = ",".join(f"{s:g}" for s in r.scales)
            lines.append(
                f"{r.name:<8}{r.layers:>7}{ranks:>10}{scales:>12}{r.shape:>14}{r.trainable:>14,}"
            )
        lines.append("-" * len(head))
        lines.append(
            f"trainable params: {self.trainable:,} || base params: {self.base:,} || "
            f"trainable%: {self.percent:.4f}"
        )
        return "\n".join(lines)


def param_report(targets: Sequence[Target], params: Mapping[str, Any]) -> ParamReport:
    """Per-kind counts from the resolved targets; ``base`` = every frozen parameter."""
    order = {n: i for i, n in enumerate(SHORT_NAMES)}
    rows = []
    for name in sorted({t.name for t in targets}, key=lambda n: (order.get(n, 99), n)):
        ts = [t for t in targets if t.name == name]
        shapes = sorted({f"{t.d_in}x{t.d_out}" for t in ts})
        rows.append(
            Row(
                name=name,
                layers=len({t.layer for t in ts}),
                ranks=tuple(sorted({t.r for t in ts})),
                scales=tuple(sorted({t.scale for t in ts})),
                shape="/".join(shapes),
                trainable=sum(t.num_params for t in ts),
            )
        )
    return ParamReport(tuple(rows), sum(r.trainable for r in rows), count_params(params))
