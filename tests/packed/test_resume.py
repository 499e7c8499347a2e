"""Per-job checkpoints (the pack's only ones) and live W&B runs, on one uninterrupted pack of 3 jobs
(4 steps, ``trainer.ckpt_every=2``, LoRA dropout on so the per-job rng streams must resume too;
the third job's learning rate makes it diverge at step 3, so it fails at the log point of
step 4) and the same pack stopped after 2 steps (``trainer.stop_after``):

- jobs of it resumed in another pack end with the uninterrupted pack's losses and predictions;
- a stopped job's run dir resumed ALONE (``lora_jax.run.app.run`` with the job's overrides and
  ``trainer.resume=true``: what ``python -m lora_jax.train ... output_dir=<run dir>`` runs)
  ends with the uninterrupted packed job's losses, adapter and predictions (fp32, CPU), and a
  solo resume with another config is refused, naming the key;
- each job's W&B run (offline files) gets its rows while the pack runs, never another job's,
  and the diverging job's run finishes (exit code 1) when it fails, before the pack ends."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from lora_jax.run.guard import RunDirLock
from lora_jax.run.jobs import run_jobs as run_pack
from lora_jax.run.tracking import Tracker
from tests.train.app import compose, load_final_lora, run_in_process, tiny_overrides
from tests.train.test_run import read_wandb_records

JOBS = (
    ["lora=qv", "lora.r=1", "seed=0"],
    ["lora=all", "lora.r=4", "seed=1"],
    ["lora=qv", "lora.r=1", "seed=2", "optim.lr=1e30"],  # diverges: NaN loss at step 3
)
OK = (0, 1)
COMMON = ["trainer.max_steps=4", "trainer.batch_size=4", "trainer.eval_before=false",
          "trainer.data_seed=0", "lora.dropout=0.1", "trainer.ckpt_every=2", "trainer.ckpt_keep=2",
          "task.max_eval_items=2", "task.decode.max_new_tokens=4", "trainer.val_examples=8"]  # fmt: skip


def _overrides(model_dir, i, *extra):
    return tiny_overrides(model_dir, *COMMON, *JOBS[i], *extra)


def _cfgs(model_dir, *extra):
    return [compose(_overrides(model_dir, i, *extra)) for i in range(len(JOBS))]


def _dirs(root):
    return [root / str(i) for i in range(len(JOBS))]


@pytest.fixture(scope="module")
def packs(tiny_e2e_gpt2_dir, tmp_path_factory):
    """(root, full records, W&B/step events of the full pack); ``root/{full,part}/{0,1,2}``."""
    root = tmp_path_factory.mktemp("packs")
    events: list[tuple] = []
    from lora_jax.train import adapters as runner

    real_step = runner.make_packed_step

    def make_step(*a, **kw):  # records each step call (its step index) among the W&B calls
        fn = real_step(*a, **kw)

        def step(*args):
            events.append(("step", int(args[-1])))
            return fn(*args)

        return step

    class Recording(Tracker):
        def __init__(self, logger_cfg, run_dir, name, *a, **kw):
            super().__init__(logger_cfg, run_dir, name, *a, **kw)
            self.name = name

        def log(self, metrics, step):
            events.append(("log", self.name, step, tuple(metrics)))
            super().log(metrics, step)

        def finish(self, exit_code=0):
            events.append(("finish", self.name, exit_code))
            super().finish(exit_code)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(runner, "make_packed_step", make_step)
        from lora_jax.run import jobs as run_jobs_module

        mp.setattr(run_jobs_module, "Tracker", Recording)
        for k, v in {
            "WANDB_MODE": "offline",
            "WANDB_SILENT": "true",
            "WANDB_DISABLE_CODE": "true",
        }.items():
            mp.setenv(k, v)
        full = run_pack(
            _cfgs(tiny_e2e_gpt2_dir, "logger=wandb", "logger.mode=offline"), _dirs(root / "full")
        )
    part = run_pack(_cfgs(tiny_e2e_gpt2_dir, "trainer.stop_after=2"), _dirs(root / "part"))
    assert [p["status"] for p in part] == ["ok"] * 3
    assert [p["run"].get("stopped_at") for p in part] == [2, 2, 2]
    assert [r["status"] for r in full] == ["ok", "ok", "failed"]
    assert "NonFiniteLoss" in full[2]["error"]
    return root, full, events


def _steps(run_dir):
    return sorted(int(p.name) for p in (run_dir / "checkpoints").iterdir() if p.name.isdigit())


def test_each_job_checkpoints_at_ckpt_every(packs):
    root, _, _ = packs
    full = _dirs(root / "full")
    assert [_steps(full[i]) for i in OK] == [[2, 4], [2, 4]]
    assert _steps(full[2]) == [2]  # diverged after step 2: never saved again
    assert [_steps(d) for d in _dirs(root / "part")] == [[2], [2], [2]]


def test_a_job_dir_of_another_run_is_refused_as_solo_runs_refuse_it(
    packs, tiny_e2e_gpt2_dir, tmp_path
):
    """Without trainer.resume, resumed with another config, or while another process holds the
    dir: the job fails with the solo run's message and its dir is left as it was (no
    training, nothing written)."""
    root, _, _ = packs
    run_dir = tmp_path / "0"
    shutil.copytree(root / "part" / "0", run_dir)
    before = (run_dir / "results.json").read_text()
    (new,) = run_pack([compose(_overrides(tiny_e2e_gpt2_dir, 0))], [run_dir])
    assert new["status"] == "failed" and "already holds checkpoints (steps [2])" in new["error"]
    assert "trainer.resume=true" in new["error"]
    (other,) = run_pack(
        [compose(_overrides(tiny_e2e_gpt2_dir, 0, "lora.r=2", "trainer.resume=true"))], [run_dir]
    )
    assert other["status"] == "failed" and "lora.r: checkpoint 1, now 2" in other["error"]
    assert (run_dir / "results.json").read_text() == before and _steps(run_dir) == [2]
    with RunDirLock(run_dir):  # another process (e.g. a solo resume) holds the dir
        (busy,) = run_pack(
            [compose(_overrides(tiny_e2e_gpt2_dir, 0, "trainer.resume=true"))], [run_dir]
        )
    assert busy["status"] == "failed" and "RunDirInUse" in busy["error"]
    assert (run_dir / "results.json").read_text() == before and _steps(run_dir) == [2]


def test_stopped_jobs_resume_in_another_pack(packs, tiny_e2e_gpt2_dir, tmp_path):
    """Jobs 0 and 2 resumed as a pack of their own (job 1, the r = 4 all-linear one, left:
    the pack's slots and padded rank shrink): their states come back from their own
    checkpoints into the new stack, and they end as in the uninterrupted pack."""
    root, full, _ = packs
    shutil.copytree(root / "part", tmp_path / "res")
    dirs = _dirs(tmp_path / "res")
    cfgs = _cfgs(tiny_e2e_gpt2_dir, "trainer.resume=true")
    res = run_pack([cfgs[0], cfgs[2]], [dirs[0], dirs[2]])
    assert [r["status"] for r in res] == ["ok", "failed"]
    assert "NonFiniteLoss" in res[1]["error"] and "by step 4" in res[1]["error"]
    a, b = full[0], res[0]
    assert b["run"]["resumed_at"] == 2
    # the record of steps 1-2 comes back from the job's own checkpoint
    assert [s for s, _ in b["metrics"]["train"]["losses"]] == [2, 4]
    assert [v for _, v in b["metrics"]["train"]["losses"]] == pytest.approx(
        [v for _, v in a["metrics"]["train"]["losses"]], rel=1e-6
    )
    assert b["metrics"]["train"]["first_loss"] == a["metrics"]["train"]["first_loss"]
    assert b["metrics"]["validation"]["loss"] == pytest.approx(
        a["metrics"]["validation"]["loss"], rel=1e-6
    )
    assert (root / "full" / "0" / "predictions_eval.txt").read_text() == (
        dirs[0] / "predictions_eval.txt"
    ).read_text()
    assert _steps(dirs[0]) == [2, 4]
    # a finished job is kept as it is on a further resume (a failed one would train again,
    # as a failed solo run does)
    (again,) = run_pack([cfgs[0]], [dirs[0]])
    assert again["run"]["finished"] == b["run"]["finished"]


def test_a_stopped_packed_job_resumes_alone(packs, tiny_e2e_gpt2_dir, tmp_path):
    import jax

    from lora_jax.train.checkpoint import CheckpointError

    root, full, _ = packs
    i = 1  # all linear modules, r = 4 (padded to nothing: the pack's largest r), dropout on
    run_dir = tmp_path / "solo"
    shutil.copytree(root / "part" / str(i), run_dir)
    with pytest.raises(CheckpointError, match=r"optim.lr: checkpoint 0.001, now 0.003"):
        run_in_process(_overrides(tiny_e2e_gpt2_dir, i, "optim.lr=3e-3", "trainer.resume=true"),
                       run_dir)  # fmt: skip
    with jax.default_matmul_precision("highest"):  # by its run dir alone: its saved config
        from lora_jax.run.app import run
        from lora_jax.run.saved import saved_config

        solo = run(saved_config(run_dir, ["trainer.resume=true", f"output_dir={run_dir}"]), run_dir)
    want = full[i]
    assert solo["status"] == "ok" and solo["run"]["resumed_at"] == 2
    assert "stopped_at" not in solo["run"]
    sl, wl = solo["metrics"]["train"]["losses"], want["metrics"]["train"]["losses"]
    assert [s for s, _ in sl] == [s for s, _ in wl] == [2, 4]
    assert [v for _, v in sl] == pytest.approx([v for _, v in wl], rel=1e-5)
    assert solo["metrics"]["validation"]["loss"] == pytest.approx(
        want["metrics"]["validation"]["loss"], rel=1e-5
    )
    assert (run_dir / "predictions_eval.txt").read_text() == (
        root / "full" / str(i) / "predictions_eval.txt"
    ).read_text()
    overrides = _overrides(tiny_e2e_gpt2_dir, i)
    got = load_final_lora(run_dir, tiny_e2e_gpt2_dir, overrides)
    ref = load_final_lora(root / "full" / str(i), tiny_e2e_gpt2_dir, overrides)
    assert got.keys() == ref.keys()
    for k in ref:
        np.testing.assert_allclose(
            got[k], ref[k], rtol=0, atol=1e-5 * max(np.abs(ref[k]).max(), 1e-3), err_msg=k
        )


def test_each_job_logs_its_own_rows_to_wandb_while_the_pack_runs(packs):
    root, full, events = packs
    names = [r["run"]["name"] for r in full]
    assert len(set(names)) == 3
    at = {e: n for n, e in enumerate(events)}
    steps = {e[1]: n for n, e in enumerate(events) if e[0] == "step"}
    finish = {e[1]: (n, e[2]) for n, e in enumerate(events) if e[0] == "finish"}
    last_decode_log = max(
        n
        for n, e in enumerate(events)
        if e[0] == "log" and any(k.startswith("eval/") for k in e[3])
    )
    for name in names[:2]:
        row = next(e for e in events if e[:3] == ("log", name, 2) and "train/loss" in e[3])
        assert steps[1] < at[row] < steps[2]  # logged at the step-2 log point, not at the end
        assert finish[name][1] == 0 and finish[name][0] > last_decode_log
    # the diverging job's run finished when it failed (log point of step 4), before the
    # others' final evaluation
    assert finish[names[2]][1] == 1 and finish[names[2]][0] < last_decode_log

    curves = []
    for i, r in enumerate(full):
        (path,) = (root / "full" / str(i)).glob("wandb/offline-run-*/run-*.wandb")
        records = read_wandb_records(path)
        history = [
            {h.key or "/".join(h.nested_key): json.loads(h.value_json) for h in rec.history.item}
            for rec in records
            if rec.WhichOneof("record_type") == "history"
        ]
        (run,) = {rec.run.display_name for rec in records if rec.WhichOneof("record_type") == "run"}
        assert run == r["run"]["name"]
        losses = [(h["_step"], h["train/loss"]) for h in history if "train/loss" in h]
        curves.append(losses)
        if i in OK:
            assert losses == [
                (s, pytest.approx(v, rel=1e-6)) for s, v in r["metrics"]["train"]["losses"]
            ]
            assert [h["_step"] for h in history if "eval/bleu" in h] == [4]
            assert [h["_step"] for h in history if "val/loss" in h] == [4]
        else:
            assert [s for s, _ in losses] == [2]  # step 4's loss was not finite: not logged
        exits = [rec.exit.exit_code for rec in records if rec.WhichOneof("record_type") == "exit"]
        assert exits == [0 if i in OK else 1]
    assert curves[0] != curves[1]  # two jobs, two loss curves, each in its own run
