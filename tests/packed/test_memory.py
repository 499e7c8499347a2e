"""``hydra.launcher.pack_size=auto``: the pack size comes from XLA's memory analysis of the
compiled packed step (lora_jax.run.pack_memory), on the tiny GPT-2; the search over K on a
stand-in byte count; the launcher's setting is checked."""

from __future__ import annotations

import pytest

from hydra_plugins.lora_jax_packed.packed_launcher import PackedLauncher
from lora_jax.run.pack_memory import auto_packs, choose_pack_size, group_step_memory
from lora_jax.run.packs import make_packs
from tests.train.app import compose, tiny_overrides

# q,v only: the smallest program to compile three times
JOBS = [("lora=qv", "lora.r=1"), ("lora=qv", "lora.r=4"), ("lora=v", "lora.r=2", "optim.lr=1e-3")]


def _cfgs(model_dir):
    common = ("trainer.batch_size=4", "task.max_len=64", "trainer.data_seed=0")
    return [compose(tiny_overrides(model_dir, *common, *job)) for job in JOBS]


def test_auto_pack_size_from_the_compiled_steps_memory(tiny_e2e_gpt2_dir, capsys):
    cfgs = _cfgs(tiny_e2e_gpt2_dir)
    groups = make_packs(cfgs, len(cfgs), [])
    assert groups == [[0, 1, 2]]
    measure = group_step_memory(cfgs)
    m1, m2, m3 = (measure(k) for k in (1, 2, 3))
    # the K-dependent parts grow with K: the adapters (arguments), their update (outputs,
    # donated: aliased) and the activations (temporaries)
    assert m1.argument < m2.argument < m3.argument and m1.temp < m2.temp < m3.temp
    assert m2.alias > 0 and m1.total < m2.total < m3.total

    # a budget between the K=2 and K=3 figures: packs of 2
    packs = auto_packs(cfgs, groups, budget_bytes=(m2.total + m3.total) // 2)
    assert packs == [[0, 1], [2]]
    out = capsys.readouterr().out
    assert "pack size auto: K=2 for 3 job(s)" in out and "hydra.launcher.memory_budget_bytes" in out
    # room for more than the group: one pack of all 3 (K=3 compiled to verify)
    assert auto_packs(cfgs, groups, budget_bytes=10 * m3.total) == [[0, 1, 2]]
    assert "K=3 for 3 job(s)" in capsys.readouterr().out
    # not even one adapter: the error names the fixes
    with pytest.raises(ValueError, match="even one adapter does not fit.*trainer.batch_size"):
        auto_packs(cfgs, groups, budget_bytes=m1.total - 1)


def test_choose_pack_size_extrapolates_then_verifies():
    calls: list[int] = []

    def affine(k: int) -> int:
        calls.append(k)
        return 1000 + 100 * k

    s = choose_pack_size(affine, budget=1750, n_jobs=64)
    assert (s.k, s.per_adapter, s.base) == (7, 100, 1000) and calls == [1, 2, 7]  # fit, verify
    calls.clear()
    assert choose_pack_size(affine, budget=10**6, n_jobs=5).k == 5 and calls == [1, 2, 5]
    calls.clear()
    assert choose_pack_size(affine, budget=1150, n_jobs=5).k == 1 and calls == [1, 2]

    def steps_up(k: int) -> int:  # not affine: K >= 4 needs a larger buffer
        calls.append(k)
        return 1000 + 100 * k + (500 if k >= 4 else 0)

    calls.clear()
    assert (
        choose_pack_size(steps_up, budget=1750, n_jobs=64).k == 3
    )  # 7 fails; re-fits: 4 fails, 3 fits
    assert calls == [1, 2, 7, 4, 3]

    def slower(k: int) -> int:  # grows slower than the line through K = 1, 2
        calls.append(k)
        return int(1000 + 100 * k**0.8)

    calls.clear()
    assert choose_pack_size(slower, budget=2000, n_jobs=64).k == 17  # 100·k^0.8 <= 1000
    assert calls == [1, 2, 13, 17]  # 13 fits; the line through 2 and 13 picks 17, which fits


def test_launcher_pack_size_setting():
    assert PackedLauncher(pack_size="auto").pack_size == "auto"
    assert PackedLauncher(pack_size="3").pack_size == 3
    for bad in ("many", 0, 2.5):
        with pytest.raises(ValueError, match="pack_size must be a positive number of jobs or auto"):
            PackedLauncher(pack_size=bad)


@pytest.mark.parametrize("pack", ["rows", "step"])
def test_estimate_compiles_the_largest_step_the_batching_makes(tiny_e2e_gpt2_dir, monkeypatch,
                                                               pack):  # fmt: skip
    """data.packing with data.pack=step packs a whole step into one row of up to batch × max_len
    tokens, attending in blocks of max_len: the estimate compiles that shape and module (not
    data.pack=rows' [batch, max_len]); the shape is what tasks.batching makes of a step of
    max_len examples."""
    from lora_jax.run import pack_memory
    from lora_jax.tasks.batching import pack_examples, pack_step

    common = ("trainer.batch_size=4", "task.max_len=64", "trainer.data_seed=0",
              "data.packing=true", f"data.pack={pack}", "data.step_multiple=48")  # fmt: skip
    cfgs = [compose(tiny_overrides(tiny_e2e_gpt2_dir, *common, *JOBS[0]))]
    seen = {}

    def capture(module, frozen, trees, k, shape, **kw):
        seen.update(block=module.cfg.packed_block, shape=shape, packed_rows=kw["packed_rows"])
        return pack_memory.StepMemory(0, 0, 0, 0)

    monkeypatch.setattr(pack_memory, "step_memory", capture)
    group_step_memory(cfgs)(1)
    full = [{"input_ids": [1] * 64, "loss_mask": [1] * 64}] * 4
    made = (pack_step(full, rows=1, multiple=48) if pack == "step" else
            pack_examples(full, 64))["input_ids"].shape  # fmt: skip
    assert seen["packed_rows"] and seen["shape"] == tuple(made)
    assert seen["shape"] == ((1, 288) if pack == "step" else (4, 64))  # 256 rounded up to 48s
    assert seen["block"] == (64 if pack == "step" else None)
    monkeypatch.undo()  # the real compile of that step
    assert group_step_memory(cfgs)(1).total > 0
