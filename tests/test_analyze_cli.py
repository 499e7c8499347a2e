"""The run-directory tools: ``python -m lora_jax.analyze`` and ``python -m lora_jax.export`` on
run folders (results.json + checkpoints/) of the tiny GPT-2, their outputs checked against the
library functions applied to the same LoRA trees."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import jax
import numpy as np
import pytest
from omegaconf import OmegaConf

from lora_jax.analysis import subspace as an
from lora_jax.lora import LoraConfig
from lora_jax.lora import init as lora_init
from lora_jax.models.pretrained import load_model
from lora_jax.models.registry import lora_modules
from lora_jax.train.checkpoint import Checkpointer
from tests.train.app import compose, tiny_overrides


def fake_run(root: Path, model_dir: Path, r: int, seed: int) -> tuple[Path, dict]:
    """A run folder as lora_jax.run.app leaves it (config in results.json, orbax checkpoint),
    holding a q,v adapter with random non-zero B."""
    run_dir = root / f"r{r}_s{seed}"
    cfg = compose(tiny_overrides(model_dir, f"lora.r={r}", "lora.alpha=16", f"seed={seed}"))
    resolved = OmegaConf.to_container(cfg, resolve=True)
    run_dir.mkdir(parents=True)
    (run_dir / "results.json").write_text(json.dumps({"status": "ok", "config": resolved}))
    lm = load_model(str(model_dir))
    lcfg = LoraConfig(r=r, alpha=16, targets="qv")
    tree, _ = lora_init(jax.random.PRNGKey(seed), lm.params, lcfg, lora_modules(lm.config))
    keys = iter(jax.random.split(jax.random.PRNGKey(seed + 7), 100))
    tree = jax.tree_util.tree_map_with_path(
        lambda p, x: jax.random.normal(next(keys), x.shape) if p[-1].key == "b" else x, tree
    )
    ck = Checkpointer(run_dir / "checkpoints")
    ck.save(3, tree, {"count": np.zeros((), np.int32)})
    ck.close()
    return run_dir, tree


def _read(path: Path) -> list[dict[str, str]]:
    with path.open() as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def runs(tiny_e2e_gpt2_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    return [fake_run(root, tiny_e2e_gpt2_dir, r, s) for r, s in ((8, 0), (2, 1))]


def test_analyze_cli_writes_paper_figures_and_tables(runs, tmp_path, capsys, monkeypatch):
    from lora_jax.analysis import cli

    titles = []
    plot_phi = cli.plot_phi

    def spy(grids, blocks, layers, title, *rest):
        titles.append(title)
        return plot_phi(grids, blocks, layers, title, *rest)

    monkeypatch.setattr(cli, "plot_phi", spy)
    (d8, t8), (d2, t2) = runs
    out = cli.main([str(d8), str(d2), "--out", str(tmp_path / "a"), "--logger", "none"])
    printed = capsys.readouterr().out
    pair = "r2-s1_vs_r8-s0"  # the lower rank first, as the paper's Fig. 3 (i ≤ 8, j ≤ 64)
    # the default is the paper's φ on A, and every output says so
    assert (out / f"phi_A_{pair}.png").stat().st_size > 10_000
    assert (out / f"phi_B_{pair}.png").is_file() and (out / "phi_by_layer_A.png").is_file()
    assert "φ on A (--phi-on): A = A's right-singular vectors" in printed
    assert "B = B's left-singular vectors" in printed
    assert titles == [
        "φ on A's right-singular vectors (U_A, input space; the paper's): r2-s1 (i) vs r8-s0 (j)",
        "φ on B's left-singular vectors (output space): r2-s1 (i) vs r8-s0 (j)",
    ]

    blocks2, blocks8 = an.delta_blocks(t2), an.delta_blocks(t8)
    expected = an.compare(blocks2, blocks8, on="A")
    summary = {r["key"]: r for r in _read(out / "phi_summary.csv")}
    out_side = an.compare(blocks2, blocks8, side="left", on="A")
    assert set(summary) == set(expected) == {f"h.{i}.attn.c_attn.{m}" for i in (0, 1) for m in "qv"}
    for key, grid in expected.items():
        assert grid.shape == (2, 8)
        assert summary[key]["phi_on"] == "A"
        assert float(summary[key]["phi_1_1"]) == pytest.approx(grid[0, 0], rel=1e-4)
        assert float(summary[key]["phi_mean"]) == pytest.approx(grid.mean(), rel=1e-4)
        assert float(summary[key]["phi_out_1_1"]) == pytest.approx(out_side[key][0, 0], rel=1e-4)
    grid_rows = _read(out / "phi_grid.csv")
    assert len(grid_rows) == 4 * 2 * 8  # both layers shown, q and v
    assert {r["phi_on"] for r in grid_rows} == {"A"}

    # --phi-on deltaW: ΔW's right/left singular vectors, named in files, columns, header, titles
    titles.clear()
    out = cli.main([str(d8), str(d2), "--out", str(tmp_path / "w"), "--logger", "none",
                    "--phi-on", "deltaW"])  # fmt: skip
    printed = capsys.readouterr().out
    assert (out / f"phi_deltaW_right_{pair}.png").is_file()
    assert (out / f"phi_deltaW_left_{pair}.png").is_file()
    assert (out / "phi_by_layer_deltaW.png").is_file() and not (out / f"phi_A_{pair}.png").exists()
    assert "φ on deltaW (--phi-on): deltaW_right = ΔW = s·BA's right-singular vectors" in printed
    assert all(t.startswith("φ on ΔW = s·BA's ") for t in titles) and len(titles) == 2
    expected = an.compare(blocks2, blocks8, on="deltaW")
    out_side = an.compare(blocks2, blocks8, side="left", on="deltaW")
    for row in _read(out / "phi_summary.csv"):
        assert row["phi_on"] == "deltaW"
        assert float(row["phi_1_1"]) == pytest.approx(expected[row["key"]][0, 0], rel=1e-4)
        assert float(row["phi_out_1_1"]) == pytest.approx(out_side[row["key"]][0, 0], rel=1e-4)

    amp = [r for r in _read(out / "amplification.csv") if r["run"] == "r8-s0"]
    blocks = {b.key: b for b in an.delta_blocks(t8)}
    assert len(amp) == 4
    for row in amp:
        b = blocks[row["key"]]
        assert float(row["delta_fro"]) == pytest.approx(np.linalg.norm(b.delta), rel=1e-4)
        assert float(row["factor"]) == pytest.approx(
            float(row["delta_fro"]) / float(row["proj_delta"]), rel=1e-3
        )
        assert float(row["proj_w"]) >= float(row["proj_delta"]) - 1e-6  # W's own are the max
    mods = _read(out / "modules.csv")
    assert {(m["run"], m["r"]) for m in mods} == {("r8-s0", "8"), ("r2-s1", "2")}
    # fake_run keeps A at its init (only B is redrawn), so A did not move
    assert all(float(m["a_moved"]) < 1e-6 for m in mods)


def test_export_cli_peft_roundtrip_and_merged(runs, tiny_e2e_gpt2_dir, tmp_path):
    from lora_jax.export import load_peft
    from lora_jax.export.__main__ import main

    d8, t8 = runs[0]
    out = main([str(d8), "--format", "peft", "--out", str(tmp_path / "p")])
    lm = load_model(str(tiny_e2e_gpt2_dir))
    back = load_peft(out, lm.config)
    for (p1, x), (p2, y) in zip(
        jax.tree_util.tree_leaves_with_path(t8), jax.tree_util.tree_leaves_with_path(back)
    ):
        assert p1 == p2
        np.testing.assert_allclose(np.asarray(y), np.asarray(x), rtol=1e-6, atol=1e-7)
    merged = main([str(d8), "--format", "merged-hf", "--out", str(tmp_path / "m")])
    lm2 = load_model(str(merged))
    ids = np.arange(10, dtype=np.int32)[None]
    with jax.default_matmul_precision("highest"):
        want = lm.module.apply({"params": lm.params, "lora": t8}, ids)[0]
        got = lm2.module.apply({"params": lm2.params}, ids)[0]
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=0, atol=1e-4)


def test_not_a_run_dir_is_named(tmp_path):
    from lora_jax.analysis.cli import main

    with pytest.raises(FileNotFoundError, match="not a run directory"):
        main([str(tmp_path), "--out", str(tmp_path / "a")])


def test_analyze_uploads_to_wandb_when_asked(runs, tmp_path, monkeypatch):
    from lora_jax.analysis.cli import main

    for k, v in {"WANDB_MODE": "offline", "WANDB_SILENT": "true", "WANDB_API_KEY": "",
                 "WANDB_DISABLE_CODE": "true"}.items():  # fmt: skip
        monkeypatch.setenv(k, v)
    out = main([str(runs[0][0]), str(runs[1][0]), "--out", str(tmp_path), "--logger", "wandb"])
    logged = list((out / "wandb").glob("offline-run-*/files/media/images/*.png"))
    assert {p.name.split("_")[0] for p in logged} >= {"phi"}, logged
    assert any(p.name.startswith("phi_A_") for p in logged), logged  # the key names the choice
