"""``--match-params`` on hand-made run records, and the closed-form matching r against the
counts lora_jax's own LoRA init gives on tiny models. Expected pairings are written out by hand
and expected numbers recomputed here with numpy/scipy from the values the test writes."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

import lora_jax.lora as L
from lora_jax import report as rep
from lora_jax.models.config import ModelConfig
from lora_jax.models.registry import build_model, lora_modules
from lora_jax.report.matched import match_params, matching_rank, params_per_rank

ALL = "q,k,v,o,gate,up,down"
ATTN, MLP = "q,k,v,o", "gate,up,down"
# (targets, r) -> recorded trainable count; made up so that the pairing is decided by hand:
#   1000 / 1000 / 1005 are within 1% (5 ≤ 0.01 × 1005): one row of q,v | mlp | all;
#   1200 is alone; 2400 / 2400 pair; 2430 is 1.2% above 2400: alone at 1%, in the row at 2%.
CELLS = {
    ("q,v", 8): 1000,
    (ALL, 1): 1000,
    (MLP, 2): 1005,
    (ATTN, 4): 1200,
    (ATTN, 8): 2400,
    (ALL, 2): 2400,
    (MLP, 5): 2430,
}
SEEDS = (0, 1, 2)


def _bleu(targets: str, r: int, seed: int) -> float:
    # a spread over seeds that differs between cells, so a cell mixing up runs shows
    return 0.60 + 0.01 * r + 0.02 * len(targets.split(",")) + (0.002 + 0.001 * r) * seed**1.5


@pytest.fixture
def runs_dir(tmp_path: Path) -> Path:
    """One results.json per (cell, seed), as lora_jax.run.app writes them."""
    root = tmp_path / "multirun"
    points = [(targets, r, count, seed) for (targets, r), count in CELLS.items() for seed in SEEDS]
    for idx, (targets, r, count, seed) in enumerate(points):
        run_dir = root / str(idx)
        run_dir.mkdir(parents=True)
        body = {
            "status": "ok",
            "run": {"name": f"run-{idx}", "dir": str(run_dir)},
            "sweep": {
                "model": "tiny",
                "task": "e2e",
                "targets": targets,
                "r": r,
                "alpha": 16.0,
                "scaling": "standard",
                "seed": seed,
            },  # fmt: skip
            "params": {"trainable": count, "base": 10**6},
            "metrics": {"eval": {"bleu": _bleu(targets, r, seed)}},
            "main_metric": "bleu",
        }
        (run_dir / "results.json").write_text(json.dumps(body))
    return root


def _by_hand(targets: str, r: int) -> tuple[float, float]:
    """Mean ×100 and the 95% Student-t half-width over the seeds (scipy's t quantile)."""
    v = 100 * np.array([_bleu(targets, r, s) for s in SEEDS])
    return v.mean(), stats.t.ppf(0.975, len(v) - 1) * v.std(ddof=1) / np.sqrt(len(v))


def _rows(matched) -> list[dict[str, int]]:
    (section,) = matched.sections
    return [{t: c.col for t, c in b.cells.items()} for b in section.budgets]


def test_pairs_the_cells_a_hand_computation_pairs(runs_dir: Path) -> None:
    report = rep.aggregate(rep.collect_runs(runs_dir), "bleu")
    m = match_params(report, 0.01)
    assert _rows(m) == [{"q,v": 8, ALL: 1, MLP: 2}, {ATTN: 8, ALL: 2}]
    assert sorted((c.row, c.col) for _, c, _ in m.unmatched) == [(MLP, 5), (ATTN, 4)]
    assert m.sections[0].targets == ["q,v", ATTN, MLP, ALL]  # attention before MLP, as the table
    first, second = m.sections[0].budgets
    assert (first.low, first.high, first.gap) == (1000, 1005, pytest.approx(5 / 1005))
    assert second.gap == 0
    # a looser tolerance takes the 2430 cell into the 2400 row; zero keeps equal counts only
    assert _rows(match_params(report, 0.02))[1] == {ATTN: 8, ALL: 2, MLP: 5}
    assert _rows(match_params(report, 0.0)) == [{"q,v": 8, ALL: 1}, {ATTN: 8, ALL: 2}]
    for budget in first, second:
        for targets, cell in budget.cells.items():
            mean, half = _by_hand(targets, cell.col)
            assert cell.mean == pytest.approx(mean, rel=1e-12)
            assert cell.half == pytest.approx(half, rel=1e-9)
            assert cell.trainable == CELLS[(targets, cell.col)]


def test_cli_prints_the_table_and_writes_the_values(runs_dir: Path, tmp_path: Path, capsys):
    out = tmp_path / "out"
    assert rep.main([str(runs_dir), "--match-params", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "Matched trainable parameters" in printed
    assert "within 1.0% of each other" in printed  # the tolerance is stated
    header = next(line for line in printed.splitlines() if line.startswith("| trainable"))
    assert [h.strip() for h in header.strip("|").split("|")] == [
        "trainable parameters", "q,v", ATTN, MLP, ALL,
    ]  # fmt: skip
    row = next(line for line in printed.splitlines() if line.startswith("| 1,000–1,005"))
    mean, half = _by_hand(MLP, 2)
    assert f"{mean:.1f} ± {half:.1f} (n=3, r=2, 1,005)" in row
    assert "gap 0.5%" in row
    assert "targets=q,k,v,o, r=4: no other target set within 1.0%" in printed
    with (out / "matched.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert {(r["targets"], int(r["r"])) for r in rows} == {
        ("q,v", 8),
        (ALL, 1),
        (MLP, 2),
        (ATTN, 8),
        (ALL, 2),
    }
    for r in rows:
        mean, half = _by_hand(r["targets"], int(r["r"]))
        assert float(r["mean"]) == pytest.approx(mean, rel=1e-12)
        assert float(r["ci_high"]) - float(r["mean"]) == pytest.approx(half, rel=1e-9)
        assert int(r["trainable"]) == CELLS[(r["targets"], int(r["r"]))]
    # the tolerance flag reaches the table
    assert (
        rep.main([str(runs_dir), "--match-params", "--match-tol", "0.02", "--out", str(out)]) == 0
    )
    assert "within 2.0% of each other" in capsys.readouterr().out


def test_match_params_refuses_other_axes(runs_dir: Path) -> None:
    with pytest.raises(SystemExit):
        rep.main([str(runs_dir), "--match-params", "--rows", "r", "--cols", "targets"])


# ------------------------------------------------------------------ the closed form
TINY_LLAMA = {"model_type": "llama", "vocab_size": 64, "hidden_size": 48, "num_hidden_layers": 3,
              "num_attention_heads": 6, "num_key_value_heads": 2, "intermediate_size": 80,
              "max_position_embeddings": 32}  # fmt: skip
TINY_GPT2 = {"model_type": "gpt2", "vocab_size": 64, "n_embd": 32, "n_layer": 2, "n_head": 4,
             "n_positions": 32}  # fmt: skip


def _lora_count(cfg: ModelConfig, params, targets: str, r: int) -> int:
    """The count lora_jax's LoRA init gives (lora_jax.lora.init + param_report)."""
    spec = targets.split(",") if "," in targets else targets  # a label is a list of names
    lora, resolved = L.init(jax.random.PRNGKey(0), params, L.LoraConfig(r=r, targets=spec),
                            lora_modules(cfg))  # fmt: skip
    n = L.param_report(resolved, params).trainable
    assert n == L.count_trainable(lora)
    return n


@pytest.mark.parametrize("hf", [TINY_LLAMA, TINY_GPT2], ids=["llama", "gpt2"])
def test_closed_form_matching_rank_equals_lora_init_counts(hf):
    cfg = ModelConfig.from_hf(hf)
    ids = jnp.zeros((1, 4), jnp.int32)
    params = build_model(cfg).init(jax.random.PRNGKey(0), ids)["params"]
    if cfg.family == "llama":  # by hand: q 48->48, k/v 48->16 (2 KV heads of 8), o 48->48
        assert params_per_rank(cfg, "attn") == 3 * (96 + 64 + 64 + 96)
        assert params_per_rank(cfg, "mlp") == 3 * 3 * (48 + 80)
    budget = _lora_count(cfg, params, "qv", 8)
    for targets in ("attn", "mlp", "all", "q,k,v,o"):
        assert 2 * params_per_rank(cfg, targets) == _lora_count(cfg, params, targets, 2)
        r, n = matching_rank(budget, cfg, targets)
        assert n == _lora_count(cfg, params, targets, r)
        # no other r comes closer to the budget, by lora_jax's own counts
        for other in {max(1, r - 1), r + 1}:
            assert abs(n - budget) <= abs(_lora_count(cfg, params, targets, other) - budget)
