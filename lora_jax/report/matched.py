"""``--match-params``: target sets side by side at equal trainable-parameter count.

"Does MLP targeting beat attention-only?" is a fair question only at one parameter budget:
attention-only at r = 8 holds fewer parameters than MLP-only at r = 8. Here the cells of the
main table (lora_jax.report.aggregate: one cell per target set × r, mean over seeds) are put
in rows of equal trainable-parameter count, read from the runs' records
(``results.json`` ``params.trainable``, never recomputed), one column per target set.

Matching rule (one, printed with the table): within one report section (the axes that split
the main table: alpha, model, task, ...), cells are sorted by their count and a row takes the
next cell while the row's largest and smallest counts differ by at most ``tol`` of the largest
(``math.isclose``'s relative rule; ``tol`` = 0 means equal counts) and the cell's target set is
not yet in the row; otherwise the cell starts a new row. A row with one target set is no
comparison: its cell is listed as unmatched. The row's gap is (largest − smallest) / largest.

The closed form for choosing the matching r (used to write conf/sweep/matched_params.yaml): an
adapted matrix ``W: [d_in, d_out]`` holds ``r·(d_in + d_out)`` LoRA parameters (A: [d_in, r],
B: [r, d_out]), so a target set T on a model of L layers holds ``r·c_T`` with
``c_T = L·Σ_{m∈T} (d_in_m + d_out_m)`` (:func:`params_per_rank`); the r of T closest to a
budget N is ``round(N / c_T)`` (:func:`matching_rank`). Exact equality of two target sets needs
``r_T·c_T = r_U·c_U``, i.e. r_T a multiple of c_U / gcd(c_T, c_U), usually out of reach.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lora_jax.errors import ConfigError
from lora_jax.lora.config import PRESETS, SHORT_NAMES
from lora_jax.models.config import ModelConfig
from lora_jax.report.aggregate import Cell, Report, metric_key, sort_key
from lora_jax.report.render import fmt_stat

DEFAULT_TOL = 0.01  # cells within 1% of each other share a row (--match-tol)


# ------------------------------------------------------------------ the closed form


def module_shapes(cfg: ModelConfig) -> dict[str, tuple[int, int]]:
    """``(d_in, d_out)`` of every LoRA-adaptable block of one layer, by short name. Llama
    family: q ``[d, H·hd]``, k/v ``[d, KV·hd]`` (grouped-query attention), o ``[H·hd, d]``,
    gate/up ``[d, ff]``, down ``[ff, d]``; GPT-2 (fused c_attn split into q, k, v blocks, no
    gate): q/k/v/o ``[d, d]``, up ``[d, ff]``, down ``[ff, d]``."""
    d, ff = cfg.hidden_size, cfg.intermediate_size
    q, kv = cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim
    shapes = {"q": (d, q), "k": (d, kv), "v": (d, kv), "o": (q, d)}
    shapes |= {"gate": (d, ff), "up": (d, ff), "down": (ff, d)}
    if cfg.family == "gpt2":
        del shapes["gate"]
    return shapes


def target_names(targets: str | Sequence[str]) -> tuple[str, ...]:
    """A preset ("attn"), a label ("q,k,v,o") or a list of short names -> short names."""
    items = targets.split(",") if isinstance(targets, str) else [str(t) for t in targets]
    names = [n for t in items for n in PRESETS.get(t.strip(), (t.strip(),))]
    unknown = [n for n in names if n not in SHORT_NAMES]
    if unknown:
        raise ConfigError(
            f"targets {targets!r}: {unknown} are not short module names ({', '.join(SHORT_NAMES)}) "
            f"or presets ({', '.join(p for p in PRESETS if p not in SHORT_NAMES)})"
        )
    return tuple(n for n in SHORT_NAMES if n in names)


def params_per_rank(cfg: ModelConfig, targets: str | Sequence[str]) -> int:
    """``c_T = L · Σ_{m∈T} (d_in_m + d_out_m)``: trainable LoRA parameters per unit of r of the
    target set T on every layer (the count at rank r is ``r·c_T``). A module the model lacks
    (gate on GPT-2) is skipped, as targeting skips it."""
    shapes = module_shapes(cfg)
    per_layer = sum(sum(shapes[n]) for n in target_names(targets) if n in shapes)
    if not per_layer:
        raise ConfigError(f"targets {targets!r} match no {cfg.family} module ({sorted(shapes)})")
    return cfg.num_layers * per_layer


def matching_rank(budget: int, cfg: ModelConfig, targets: str | Sequence[str]) -> tuple[int, int]:
    """The integer r ≥ 1 whose count ``r·c_T`` is closest to ``budget`` (``round(budget / c_T)``),
    and that count."""
    per_rank = params_per_rank(cfg, targets)
    r = max(1, round(budget / per_rank))
    return r, r * per_rank


# ------------------------------------------------------------------ matching recorded cells


@dataclass
class Budget:
    """One row: at most one cell per target set; counts within the tolerance."""

    cells: dict[Any, Cell]  # target label -> cell

    @property
    def low(self) -> int:
        return min(c.trainable for c in self.cells.values())

    @property
    def high(self) -> int:
        return max(c.trainable for c in self.cells.values())

    @property
    def gap(self) -> float:
        """(largest − smallest count) / largest; 0 for equal counts."""
        return (self.high - self.low) / self.high if self.high else 0.0


@dataclass
class MatchedSection:
    fixed: dict[str, Any]  # the split axes' values, as in the main table's Section
    targets: list[Any]  # columns: the target sets present in some row, in table order
    budgets: list[Budget]  # rows, by ascending count


@dataclass
class Matched:
    report: Report
    tol: float
    sections: list[MatchedSection]
    unmatched: list[tuple[dict[str, Any], Cell, str]] = field(default_factory=list)


def _rows(cells: list[Cell], tol: float) -> list[Budget]:
    rows: list[Budget] = []
    for cell in sorted(cells, key=lambda c: (c.trainable, sort_key("targets", c.row))):
        row = rows[-1] if rows else None
        if (
            row is not None
            and cell.row not in row.cells
            and math.isclose(cell.trainable, row.low, rel_tol=tol, abs_tol=0)
        ):
            row.cells[cell.row] = cell
        else:
            rows.append(Budget({cell.row: cell}))
    return rows


def match_params(report: Report, tol: float = DEFAULT_TOL) -> Matched:
    """Rows of cells at (nearly) equal recorded trainable count (module docstring); ``report``
    has target sets as rows and r as columns (``aggregate(runs, metric, "targets", "r")``)."""
    if not 0 <= tol < 1:
        raise ValueError(f"the relative tolerance must be in [0, 1); got {tol}")
    out = Matched(report, tol, [])
    for section in report.sections:
        cells = [c for c in section.cells.values() if c.trainable]
        out.unmatched += [
            (section.fixed, c, "no trainable count in its results.json (params.trainable)")
            for c in section.cells.values()
            if not c.trainable
        ]
        budgets = []
        for row in _rows(cells, tol):
            if len(row.cells) > 1:
                budgets.append(row)
            else:
                (cell,) = row.cells.values()
                why = f"no other target set within {tol:.1%} of its {cell.trainable:,} parameters"
                out.unmatched.append((section.fixed, cell, why))
        targets = sorted(
            {t for b in budgets for t in b.cells}, key=lambda v: sort_key("targets", v)
        )
        if budgets:
            out.sections.append(MatchedSection(section.fixed, targets, budgets))
    return out


# ------------------------------------------------------------------ rendering


def _percent(m: Matched) -> bool:
    return m.report.scales[metric_key(m.report.metric)] == 100.0


def fmt_budget(b: Budget) -> str:
    """ "1,497,600" for equal counts, else "1,497,600–1,526,400 (gap 1.9%)"."""
    if b.low == b.high:
        return f"{b.low:,}"
    return f"{b.low:,}–{b.high:,} (gap {b.gap:.1%})"


def fmt_matched_cell(cell: Cell, percent: bool) -> str:
    """``mean ± h (n=K, r=R, count)``, h the 95% Student-t half-width over seeds (none at K=1)."""
    extra = [f"n={cell.n}", f"r={cell.col}", f"{cell.trainable:,}"]
    if cell.lr is not None:
        extra.append(f"lr={cell.lr.lr:.1e}")
    return f"{fmt_stat(cell.mean, cell.half, percent)} ({', '.join(extra)})"


def _pad(row: list[str], widths: list[int]) -> str:
    return "| " + " | ".join(s.ljust(w) for s, w in zip(row, widths)) + " |"


def render_matched(m: Matched) -> str:
    """The matched tables as Markdown (rows: parameter budget, columns: target sets)."""
    rep = m.report
    percent = _percent(m)
    unit = " (×100)" if percent else ""
    lines = [
        f"# Matched trainable parameters: {rep.metric}{unit} by parameter budget × target set, "
        f"init: {rep.init}",
        "",
        f"Matching: the runs' recorded trainable counts (results.json params.trainable); a row "
        f"holds at most one cell per target set, with counts within {m.tol:.1%} of each other "
        f"((largest − smallest) ≤ {m.tol:g} × largest; gap = (largest − smallest) / largest). "
        "Cells: mean ± h (n seeds, r, trainable parameters), h = t_{0.975, n−1}·s/√n the "
        "half-width of the 95% Student-t interval of the mean over seeds (none at n=1); "
        "— = no cell of that target set at this budget.",
        "",
    ]
    if not m.sections:
        lines += [f"No two target sets have counts within {m.tol:.1%} of each other "
                  "(a larger --match-tol pairs looser budgets).", ""]  # fmt: skip
    for section in m.sections:
        if section.fixed:
            lines += ["## " + ", ".join(f"{a}={v}" for a, v in section.fixed.items()), ""]
        header = ["trainable parameters", *map(str, section.targets)]
        body = [
            [fmt_budget(b)]
            + [
                fmt_matched_cell(b.cells[t], percent) if t in b.cells else "—"
                for t in section.targets
            ]
            for b in section.budgets
        ]
        widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]
        lines += [_pad(header, widths), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
        lines += [_pad(r, widths) for r in body] + [""]
    if m.unmatched:
        lines += [f"## Cells without a match ({len(m.unmatched)})", ""]
        for fixed, cell, why in m.unmatched:
            where = "".join(f", {a}={v}" for a, v in fixed.items())
            lines.append(f"- targets={cell.row}, r={cell.col}{where}: {why}")
        lines.append("")
    if rep.failed:
        lines += [f"{len(rep.failed)} failed run(s) excluded (the main report lists them).", ""]
    return "\n".join(lines)


def write_matched_csv(m: Matched, path: Path) -> None:
    """One row per matched cell, display units: the budget (low, high, gap), the split axes,
    targets, r, trainable, n, mean, std and the 95% t interval."""
    fixed_axes = sorted({a for s in m.sections for a in s.fixed})
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["budget_low", "budget_high", "gap", *fixed_axes, "targets", "r",
                    "trainable", "n", "mean", "std", "ci_low", "ci_high", "metric", "tol"])  # fmt: skip
        for s in m.sections:
            for b in s.budgets:
                for t in s.targets:
                    if (c := b.cells.get(t)) is None:
                        continue
                    w.writerow([b.low, b.high, b.gap, *(s.fixed.get(a) for a in fixed_axes),
                                t, c.col, c.trainable, c.n, c.mean, c.std,
                                *(c.ci or (None, None)), metric_key(m.report.metric), m.tol])  # fmt: skip


def write_matched(m: Matched, out: str | Path) -> dict[str, Path]:
    """Write matched.md and matched.csv into ``out``; returns the paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"matched.md": out / "matched.md", "matched.csv": out / "matched.csv"}
    paths["matched.md"].write_text(render_matched(m))
    write_matched_csv(m, paths["matched.csv"])
    return paths
