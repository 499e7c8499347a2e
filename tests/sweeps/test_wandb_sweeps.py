"""sweeps/wandb/*.yaml: each is the same grid as its Hydra sweep (conf/sweep/), composes, and
one agent step (the command `wandb agent` would run, built with wandb's own helpers) trains the
tiny GPT-2 in W&B offline mode: the run is grouped by the sweep, tagged and recorded by the
modules it adapted (here lora.targets=[q,k,v,o,up,down]), logs the full config and the
validation loss, and the report files it under those modules."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.train.app import CONF_DIR, ROOT, compose, read_results, tiny_overrides

SWEEPS = sorted((ROOT / "sweeps" / "wandb").glob("*.yaml"))


def _grid(params: dict) -> dict[str, list]:
    return {k: v["values"] if "values" in v else [v["value"]] for k, v in params.items()}


@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: p.stem)
def test_wandb_sweep_matches_its_hydra_sweep_and_composes(path):
    sweep = yaml.safe_load(path.read_text())
    hydra_sweep = yaml.safe_load((Path(CONF_DIR) / "sweep" / path.name).read_text())
    command = sweep["command"]
    assert command[:4] == ["${env}", "${interpreter}", "-m", "lora_jax.train"]
    assert command[-1] == "${args_no_hyphens}" and "logger=wandb" in command
    fixed = command[4:-1]
    assert f"sweep_name={hydra_sweep['sweep_name']}" in fixed and sweep["name"] == path.stem
    assert sweep["method"] == "grid"
    # The same grid: the Hydra sweeper's axes and the Hydra sweep's own fixed values.
    want = {k: [yaml.safe_load(x) for x in str(v).split(",")]
            for k, v in hydra_sweep["hydra"]["sweeper"]["params"].items()}  # fmt: skip
    body = {k: v for k, v in hydra_sweep.items() if k not in ("defaults", "hydra", "sweep_name")}
    want |= {f"{g}.{k}": [v] for g, sub in body.items() for k, v in sub.items()}
    assert _grid(sweep["parameters"]) == want
    # The first grid point composes, with the values it states.
    point = {k: v[0] for k, v in _grid(sweep["parameters"]).items()}
    os.environ.setdefault("LORA_JAX_E2E_DIR", "/data/e2e")
    cfg = compose([*fixed, *(f"{k}={v}" for k, v in point.items())])
    for key, value in point.items():
        if "." in key:
            group, leaf = key.split(".")
            assert cfg[group][leaf] == value
    assert cfg.sweep_name == hydra_sweep["sweep_name"]


def agent_command(sweep: dict, values: dict) -> list[str]:
    """The command line `wandb agent` runs for one grid point (wandb.wandb_agent's loop)."""
    from wandb.sdk.launch.sweeps import utils as sweep_utils

    command = sweep_utils.create_sweep_command(list(sweep["command"]))
    macros = sweep_utils.create_sweep_command_args(
        {"args": {k: {"value": v} for k, v in values.items()}}
    )
    macros |= {
        "interpreter": [sys.executable],
        "env": ["/usr/bin/env"],
        "program": [sweep["program"]],
    }
    out: list[str] = []
    for c in map(str, command):
        out += macros.get(c[2:-1]) or [] if c.startswith("${") and c.endswith("}") else [c]
    return out


def test_one_agent_step_offline_on_the_tiny_model(tiny_e2e_gpt2_dir, tmp_path):
    from tests.train.test_run import read_wandb_records

    sweep = yaml.safe_load((ROOT / "sweeps" / "wandb" / "rank_table.yaml").read_text())
    point = {k: v[0] for k, v in _grid(sweep["parameters"]).items()}  # lora=q r=1 α=16 seed=0
    cmd = agent_command(sweep, point)
    assert cmd[:2] == ["/usr/bin/env", sys.executable]
    assert cmd[2:] == ["-m", "lora_jax.train", "experiment=e2e_offline_smollm2", "logger=wandb",
                       "sweep_name=rank_table", "lora=q", "lora.r=1", "lora.alpha=16",
                       "lora.init=kaiming", "seed=0"]  # fmt: skip
    # On the tiny model: the demo experiment instead of the real-data one, tiny overrides after
    # the agent's arguments, and the targets under test.
    cmd[4] = "experiment=demo"
    run_dir = tmp_path / "run"
    cmd += [*tiny_overrides(tiny_e2e_gpt2_dir, "trainer.max_steps=4", "trainer.log_every=2",
                            "trainer.eval_before=false", "task.max_eval_items=2",
                            "task.decode.max_new_tokens=4", "trainer.val_examples=6", "task.max_len=32"),
            "lora.targets=[q,k,v,o,up,down]", "logger.mode=offline", f"hydra.run.dir={run_dir}"]  # fmt: skip
    env = os.environ | {"JAX_PLATFORMS": "cpu", "WANDB_MODE": "offline", "WANDB_SILENT": "true",
                        "WANDB_DIR": str(tmp_path), "WANDB_DISABLE_CODE": "true"}  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    res = read_results(run_dir)
    label = "q,k,v,o,up,down"
    assert res["status"] == "ok" and res["run"]["name"] == f"local-e2e-{label}-r1-a16-s0"
    assert res["sweep"]["targets"] == res["lora"]["label"] == label
    assert (res["sweep"]["sweep"], res["sweep"]["r"], res["sweep"]["alpha"]) == (
        "rank_table",
        1,
        16.0,
    )
    assert set(res["lora"]["modules"]) == {"q", "k", "v", "o", "up", "down"}
    assert all(m["scale"] == 16.0 for m in res["lora"]["modules"].values())  # α/r = 16/1
    val = res["metrics"]["validation"]
    # 6 asked: whole training sources held out until >= 6 examples (lora_jax.train.data)
    assert val["examples"] >= 6 and res["data"]["validation"]["split"] == "train-holdout"
    assert [s for s, _ in val["history"]] == [4] and val["loss"] > 0

    (wandb_file,) = run_dir.glob("wandb/offline-run-*/run-*.wandb")
    records = read_wandb_records(wandb_file)
    runs = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    assert runs[0].run_group == "rank_table"
    tags = set(runs[-1].tags)
    assert {f"targets={label}", "r=1", "alpha=16", "scale=16", "seed=0", "lr=0.001"} <= tags
    config = {}
    for rec in records:
        if rec.WhichOneof("record_type") in ("config", "run"):
            cfg = rec.config if rec.WhichOneof("record_type") == "config" else rec.run.config
            config |= {i.key: json.loads(i.value_json) for i in cfg.update}
    for group in ("model", "task", "optim", "trainer", "lora"):  # W&B drops empty dicts
        assert config[group] == {k: v for k, v in res["config"][group].items() if v != {}}
    assert config["sweep"]["targets"] == label
    history = [
        {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.history.item}
        for r in records if r.WhichOneof("record_type") == "history"
    ]  # fmt: skip
    assert [h["val/loss"] for h in history if "val/loss" in h] == [pytest.approx(val["loss"])]

    from lora_jax import report as rep

    report = rep.aggregate(rep.collect_runs(run_dir), "bleu")
    assert report.sections[0].rows == [label]
