"""One short end-to-end run of the Hydra app (subprocess, W&B offline) on the tiny GPT-2:
results.json fields, the loss goes down, predictions, the offline W&B records; then the trained
adapter evaluated in a fresh model (eval_only) reproduces the run's final metrics."""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path

import pytest

from tests.train.app import read_results, run_app, tiny_overrides

# lora=all and a high rate: the tiny random model's loss falls clearly within 24 steps.
TRAIN = ["lora=all", "lora.r=4", "optim.lr=3e-2", "trainer.max_steps=24", "trainer.log_every=4"]


@pytest.fixture(scope="module")
def trained(tiny_e2e_gpt2_dir, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("run") / "r"
    wandb_dir = tmp_path_factory.mktemp("wandb")
    env = {"WANDB_DIR": str(wandb_dir), "WANDB_MODE": "offline", "WANDB_SILENT": "true",
           "WANDB_API_KEY": "", "WANDB_DISABLE_CODE": "true"}  # fmt: skip
    args = tiny_overrides(tiny_e2e_gpt2_dir, *TRAIN, "logger=wandb", "logger.mode=offline")
    proc = run_app([*args, f"hydra.run.dir={run_dir}"], env=env, check=True)
    return run_dir, args, proc


def test_results_json_has_every_field(trained):
    run_dir, _, _ = trained
    res = read_results(run_dir)
    assert res["status"] == "ok" and res["error"] is None
    for k in ("git_commit", "device_kind", "wall_time_s", "command"):
        assert res["run"][k] not in (None, ""), k
    assert res["run"]["wall_time_s"] > 0
    import flax
    import jax

    assert res["run"]["packages"]["jax"] == jax.__version__  # lora_jax.train.env_info
    assert res["run"]["packages"]["flax"] == flax.__version__
    # what it ran on, and the precision policy resolved for the CPU (auto: fp32)
    assert res["run"]["backend"] == "cpu" and res["run"]["device_count"] == jax.device_count()
    assert res["run"]["host_malloc"].startswith(("retain", "system: "))
    assert res["run"]["process_count"] == 1
    assert res["run"]["precision"] == {"compute": "float32", "base": "float32", "matmul": None}

    # The config is the resolved one: no interpolations left, and the run name resolved alpha.
    assert "${" not in json.dumps(res["config"])
    assert res["config"]["lora"]["r"] == 4 and res["config"]["optim"]["lr"] == 3e-2
    # The name is decided at compose time (the preset's modules); the record holds what GPT-2
    # really adapted (it has no gate), with α = 8 (the constant default) and scale α/r.
    assert res["config"]["name"] == "local-e2e-q,k,v,o,gate,up,down-r4-a8-s0"
    axes = res["sweep"]
    assert {k: axes[k] for k in ("model", "task", "targets", "r", "alpha", "scale", "seed")} == {
        "model": "local", "task": "e2e", "targets": "q,k,v,o,up,down", "r": 4, "alpha": 8.0,
        "scale": 2.0, "seed": 0,
    }  # fmt: skip
    assert axes["lr"] == 3e-2 and axes["steps"] == 24 and axes["tokens_seen"] > 0
    assert res["lora"]["modules"]["up"] == {"r": 4, "alpha": 8.0, "scale": 2.0, "blocks": 2}
    # Closed-form count: lora=all on 2 layers of d=32 (GPT-2: q,k,v,o [32x32], fc [32x128],
    # proj [128x32]); LoRA r·(in+out) per block.
    d, r, layers = 32, 4, 2
    per_layer = 4 * r * (d + d) + r * (d + 4 * d) + r * (4 * d + d)
    p = res["params"]
    assert p["trainable"] == layers * per_layer
    base = 512 * d + 256 * d + layers * (4 * d + 3 * d * d + 3 * d + d * d + d
                                         + d * 4 * d + 4 * d + 4 * d * d + d) + 2 * d  # fmt: skip
    assert p["base"] == base
    assert p["percent"] == pytest.approx(100 * p["trainable"] / p["base"])


def test_metrics_and_loss_decrease(trained):
    run_dir, _, _ = trained
    m = read_results(run_dir)["metrics"]
    for split in ("eval", "eval_before"):
        assert set(m[split]) >= {"bleu", "nist", "meteor", "rouge_l", "cider"}
        assert 0.0 <= m[split]["bleu"] <= 1.0 and m[split]["nist"] >= 0.0
    tr = m["train"]
    assert tr["steps"] == 24
    assert tr["tokens_per_s"] > 0
    assert math.isfinite(tr["first_loss"]) and math.isfinite(tr["final_loss"])
    # The loss of the first batch vs the mean over the last 4 steps (log_every=4).
    assert tr["final_loss"] < tr["first_loss"] - 1.0, tr
    assert (
        "memory" in read_results(run_dir)
        and "host_peak_rss_bytes" in read_results(run_dir)["memory"]
    )


def test_predictions_one_line_per_eval_item(trained):
    run_dir, _, _ = trained
    for tag in ("eval", "eval_before"):
        lines = (run_dir / f"predictions_{tag}.txt").read_text().split("\n")
        assert lines[-1] == "" and len(lines) - 1 == 4  # task.max_eval_items=4


# --- W&B offline: read the run back from its .wandb file (a leveldb-style log of protobuf
# Records: 7-byte file header ":W&B" magic version; 32 KiB blocks of records
# crc32 u32 | length u16 | type u8 (FULL 1, FIRST 2, MIDDLE 3, LAST 4) | data).


def read_wandb_records(path: Path) -> list:
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B", data[:7]
    block, pos, out, parts = 32768, 7, [], []
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # block trailer
            pos += block - pos % block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        chunk = data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind == 0 and length == 0:
            break
        parts.append(chunk)
        if kind in (1, 4):
            rec = wandb_internal_pb2.Record()
            rec.ParseFromString(b"".join(parts))
            out.append(rec)
            parts = []
    return out


def test_wandb_offline_run_has_history_and_summary(trained):
    run_dir, _, _ = trained
    files = list(run_dir.glob("wandb/offline-run-*/run-*.wandb"))
    assert len(files) == 1, list(run_dir.rglob("*"))
    records = read_wandb_records(files[0])
    history, summary = [], {}
    for rec in records:
        kind = rec.WhichOneof("record_type")
        if kind == "history":
            history.append({(i.key or "/".join(i.nested_key)): json.loads(i.value_json)
                            for i in rec.history.item})  # fmt: skip
        elif kind == "summary":
            for i in rec.summary.update:
                summary[i.key or "/".join(i.nested_key)] = json.loads(i.value_json)
        elif kind == "run":
            run_rec = rec.run
    res = read_results(run_dir)
    losses = [(h["_step"], h["train/loss"]) for h in history if "train/loss" in h]
    assert [s for s, _ in losses] == [4, 8, 12, 16, 20, 24]
    assert [pytest.approx(v, rel=1e-6) for _, v in losses] == [
        v for _, v in res["metrics"]["train"]["losses"]
    ]
    assert any("eval/bleu" in h for h in history)
    assert summary["metrics/eval/bleu"] == pytest.approx(res["metrics"]["eval"]["bleu"])
    assert summary["metrics/eval/nist"] == pytest.approx(res["metrics"]["eval"]["nist"])
    assert summary["status"] == "ok"
    assert run_rec.display_name == res["run"]["name"]


def test_eval_only_adapter_reproduces_final_metrics(trained, tmp_path):
    """``python -m lora_jax.evaluate RUN_DIR``: a fresh model + the trained run's final
    checkpoint, with the run's saved config (no override repeated), no training: the same
    hypotheses and metrics. This is also the one run that computes the Java (COCO) metrics
    through the app."""
    from lora_jax.run.evaluate import evaluate_run

    run_dir, _, _ = trained
    ev_dir = tmp_path / "ev"
    res = evaluate_run(run_dir, ["task.options.coco_metrics=true"], out_dir=str(ev_dir))
    trained_res = read_results(run_dir)
    assert res["status"] == "ok"
    assert (ev_dir / "predictions_eval.txt").read_text() == (
        run_dir / "predictions_eval.txt"
    ).read_text()
    for k in ("bleu", "nist"):
        assert res["metrics"]["eval"][k] == pytest.approx(
            trained_res["metrics"]["eval"][k], abs=1e-9
        )
    for k in ("meteor", "rouge_l", "cider"):
        assert isinstance(res["metrics"]["eval"][k], float), res["metrics"]["eval"]
    # Not the base model: the base model's predictions differ.
    assert (ev_dir / "predictions_eval.txt").read_text() != (
        run_dir / "predictions_eval_before.txt"
    ).read_text()
