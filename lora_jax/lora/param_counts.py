"""Trainable-parameter report: per module kind, in total and as a share of the base model
(like PEFT's print_trainable_parameters, but per module), and the frozen base's resident bytes
and bits per weight (quantized kernels counted packed, lora_jax.quant)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

from lora_jax.lora.params import count_params
from lora_jax.lora.targeting import SHORT_NAMES, Target
from lora_jax.quant import frozen_bytes


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
    frozen_bytes: int = 0  # resident bytes of the frozen base (quantized kernels packed)
    quantized_weights: int = 0  # weights held in quantized kernels (lora_jax.quant)
    quantized_bytes: int = 0

    @property
    def percent(self) -> float:
        return 100.0 * self.trainable / self.base if self.base else 0.0

    @property
    def bits_per_weight(self) -> float:
        """Frozen base bits per weight, all parameters (embeddings and norms included)."""
        return 8.0 * self.frozen_bytes / self.base if self.base else 0.0

    def as_dict(self) -> dict[str, Any]:
        qbits = (
            8.0 * self.quantized_bytes / self.quantized_weights if self.quantized_weights else None
        )
        return {
            "trainable": self.trainable,
            "base": self.base,
            "percent": self.percent,
            "per_module": {r.name: r.trainable for r in self.rows},
            "frozen_bytes": self.frozen_bytes,
            "frozen_bits_per_weight": self.bits_per_weight,
            "quantized_weights": self.quantized_weights,
            "quantized_bits_per_weight": qbits,
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
        lines.append(
            f"frozen base: {self.frozen_bytes / 2**20:,.1f} MiB, {self.bits_per_weight:.2f} bits/weight"
            + (f" ({self.quantized_weights:,} weights quantized, "
               f"{8.0 * self.quantized_bytes / self.quantized_weights:.2f} bits/weight)"
               if self.quantized_weights else "")
        )  # fmt: skip
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
    fb = frozen_bytes(params)
    return ParamReport(
        tuple(rows),
        sum(r.trainable for r in rows),
        count_params(params),
        frozen_bytes=fb["bytes"],
        quantized_weights=fb["quantized_weights"],
        quantized_bytes=fb["quantized_bytes"],
    )
