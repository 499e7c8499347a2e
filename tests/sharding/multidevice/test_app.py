"""The training app on 8 devices: a run on a 2×4 mesh (LoRA and optimizer state fsdp-sharded)
stops after 2 steps, then resumes on an 8-way fsdp mesh with replicated LoRA and finishes."""

from __future__ import annotations

import math

from tests.train.app import read_results, run_in_process, tiny_overrides


def test_app_trains_sharded_and_resumes_on_another_mesh(tiny_e2e_gpt2_dir, tmp_path):
    base = tiny_overrides(tiny_e2e_gpt2_dir, "trainer.max_steps=4", "trainer.eval_before=false",
                          "task.max_eval_items=2", "task.decode.max_new_tokens=2")  # fmt: skip
    run_dir = tmp_path / "r"
    first = run_in_process(
        [*base, "mesh.data=2", "mesh.fsdp=-1", "mesh.lora=fsdp", "trainer.stop_after=2"], run_dir
    )
    assert first["status"] == "ok" and first["run"]["mesh"] == {"data": 2, "fsdp": 4}
    assert first["run"]["device_count"] == 8 and first["run"]["stopped_at"] == 2
    res = run_in_process([*base, "mesh=fsdp", "trainer.resume=true"], run_dir)
    assert res["status"] == "ok" and res["run"]["mesh"] == {"data": 1, "fsdp": 8}
    assert res["metrics"]["train"]["steps"] == 4
    assert math.isfinite(res["metrics"]["train"]["final_loss"])
    assert read_results(run_dir)["status"] == "ok"


def test_a_pack_trains_on_a_sharded_mesh_like_on_one_device(tiny_e2e_gpt2_dir, tmp_path):
    """The one engine's mesh support holds for packs: K = 2 jobs on a 2×4 mesh with the stacked
    LoRA/optimizer state (and its trainable mask) fsdp-sharded log the losses of the same pack
    on one device (fp32, CPU)."""
    import numpy as np

    from lora_jax.run.jobs import run_jobs
    from tests.train.app import compose

    base = tiny_overrides(tiny_e2e_gpt2_dir, "trainer.max_steps=3", "trainer.eval_before=false",
                          "task.max_eval_items=2", "task.decode.max_new_tokens=2",
                          "trainer.data_seed=0", "trainer.log_every=1")  # fmt: skip
    jobs = [[*base, "lora.r=1", "seed=1"], [*base, "lora.r=4", "seed=2"]]
    mesh = ["mesh.data=2", "mesh.fsdp=-1", "mesh.lora=fsdp"]
    res = run_jobs([compose([*ov, *mesh]) for ov in jobs], [tmp_path / "s0", tmp_path / "s1"])
    ref = run_jobs([compose(ov) for ov in jobs], [tmp_path / "o0", tmp_path / "o1"])
    for r, want in zip(res, ref):
        assert r["status"] == "ok" and r["run"]["mesh"] == {"data": 2, "fsdp": 4}
        assert "mesh" not in want["run"]
        got = [x for _, x in r["metrics"]["train"]["losses"]]
        np.testing.assert_allclose(got, [x for _, x in want["metrics"]["train"]["losses"]],
                                   rtol=1e-5)  # fmt: skip
