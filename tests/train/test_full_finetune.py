"""``method=full``: the full fine-tuning baseline goes through the same engine (data, loop,
checkpoints, decoding, metrics). On the tiny GPT-2: every weight trains (also those LoRA never
targets), the run equals a plain optax AdamW loop written here over the same batches (fp32,
matmul precision "highest"), and a stopped run resumes to the uninterrupted result."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from tests.train.app import compose, run_in_process, tiny_overrides

STEPS = 6


def _ov(model_dir, *extra):
    return tiny_overrides(model_dir, "method=full", f"trainer.max_steps={STEPS}",
                          "trainer.eval_before=false", "optim.lr=1e-3", "optim.warmup_steps=0",
                          "optim.schedule=constant", "optim.weight_decay=0.01", "trainer.log_every=1",
                          *extra)  # fmt: skip


def _final_params(run_dir, like):
    from lora_jax.train.checkpoint import Checkpointer
    from lora_jax.train.optimizer import build_optimizer

    optim = dict(name="adamw", lr=1e-3, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.01,
                 schedule="constant", warmup_steps=0, grad_clip=None, grad_accum=1)  # fmt: skip
    ck = Checkpointer(run_dir / "checkpoints")
    try:
        opt = build_optimizer(optim, like, STEPS, every_leaf=True)[0].init(like)
        params, _, step, _ = ck.restore(like, opt)
    finally:
        ck.close()
    return params, step


def _flat(tree):
    return {
        jax.tree_util.keystr(p): np.asarray(v)
        for p, v in jax.tree_util.tree_flatten_with_path(tree)[0]
    }


@pytest.fixture(scope="module")
def full_run(tiny_e2e_gpt2_dir, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("full")
    with jax.default_matmul_precision("highest"):
        rec = run_in_process(_ov(tiny_e2e_gpt2_dir), run_dir)
    return run_dir, rec


def test_every_weight_trains_and_equals_a_plain_optax_loop(full_run, tiny_e2e_gpt2_dir):
    from lora_jax.models.pretrained import load_model
    from lora_jax.tasks.base import Example  # noqa: F401  (the batches come from the run's code)
    from lora_jax.train import data
    from lora_jax.train.step import lm_loss

    run_dir, rec = full_run
    assert rec["status"] == "ok" and rec["params"]["method"] == "full"
    assert rec["sweep"]["targets"] == "full"
    lm = load_model(str(tiny_e2e_gpt2_dir))
    init = _flat(lm.params)
    final, step = _final_params(run_dir, lm.params)
    assert step == STEPS
    got = _flat(final)
    changed = {k for k in init if not np.array_equal(init[k], got[k])}
    assert changed == set(init), sorted(set(init) - changed)[:5]  # embeddings, MLP, norms too

    # the same batches, trained by a loop written here: optax.adamw on every leaf
    # (padded rows: the same examples per step as the run's packed rows, data.packing)
    cfg = compose([*_ov(tiny_e2e_gpt2_dir), "data.packing=false"])
    assert rec["data"]["packing"] is True
    task = data.build_task(cfg.task, run_dir)
    train = data.train_examples(cfg, task)
    batches = data.train_batches(cfg, lm.tokenizer, task, train)
    tx = optax.adamw(1e-3, b1=cfg.optim.b1, b2=cfg.optim.b2, eps=cfg.optim.eps, weight_decay=0.01)

    def loss_fn(p, batch):
        logits, _ = lm.module.apply({"params": p}, batch["input_ids"],
                                    seq_lengths=jnp.sum(batch["attention_mask"], axis=1, dtype=jnp.int32),
                                    deterministic=True)  # fmt: skip
        return lm_loss(logits, batch)[0]

    params, opt, losses = lm.params, tx.init(lm.params), []
    with jax.default_matmul_precision("highest"):
        for s in range(STEPS):
            batch = batches.batch_at(s)
            loss, g = jax.value_and_grad(loss_fn)(params, batch)
            upd, opt = tx.update(g, opt, params)
            params = optax.apply_updates(params, upd)
            losses.append(float(loss))
    # Tolerance: 1e-5 of each leaf's scale, or 1e-3 of the learning rate absolute. AdamW moves
    # an entry by up to lr per step along m/(sqrt(v)+eps); for an entry whose gradient is
    # within fp32 summation noise of zero that ratio is itself noise (XLA's fused program and
    # this loop sum in different orders), so such entries may differ by a small part of lr.
    want = _flat(params)
    for k in want:
        scale = max(float(np.abs(want[k]).max()), 1e-3)
        np.testing.assert_allclose(got[k], want[k], rtol=0, atol=max(1e-5 * scale, 1e-6), err_msg=k)
    logged = [x for _, x in rec["metrics"]["train"]["losses"]]
    np.testing.assert_allclose(logged, losses, rtol=1e-5)


def test_full_fine_tuning_resumes_exactly(full_run, tiny_e2e_gpt2_dir, tmp_path):
    from lora_jax.models.pretrained import load_model

    ref_dir, ref = full_run
    with jax.default_matmul_precision("highest"):
        first = run_in_process(_ov(tiny_e2e_gpt2_dir, "trainer.stop_after=3"), tmp_path)
        assert first["run"]["stopped_at"] == 3
        res = run_in_process(_ov(tiny_e2e_gpt2_dir, "trainer.resume=true"), tmp_path)
    assert res["status"] == "ok" and res["run"]["resumed_at"] == 3
    like = load_model(str(tiny_e2e_gpt2_dir)).params
    a, b = _flat(_final_params(tmp_path, like)[0]), _flat(_final_params(ref_dir, like)[0])
    for k in a:
        np.testing.assert_allclose(a[k], b[k], rtol=0, atol=1e-6 * max(np.abs(b[k]).max(), 1e-3))
    assert res["metrics"]["eval"] == pytest.approx(ref["metrics"]["eval"])


def test_full_fine_tuning_refuses_what_it_cannot_do(tiny_e2e_gpt2_dir, tmp_path):
    from lora_jax.errors import ConfigError
    from lora_jax.run.jobs import run_jobs

    with pytest.raises(ConfigError, match="model.quant=none"):
        run_in_process(_ov(tiny_e2e_gpt2_dir, "model.quant=nf4"), tmp_path / "q")
    recs = run_jobs([compose(_ov(tiny_e2e_gpt2_dir, f"seed={s}", "trainer.data_seed=0")) for s in (1, 2)],
                    [tmp_path / "p1", tmp_path / "p2"])  # fmt: skip
    assert all("not packed" in r["error"] for r in recs)


def test_evaluate_reloads_a_full_run(full_run, tiny_e2e_gpt2_dir):
    """``python -m lora_jax.evaluate RUN_DIR`` on a full fine-tuning run decodes with its trained
    weights (the checkpoint's final params, not the base): the run's own metrics again. A LoRA
    config asking for those weights is refused naming the method."""
    from lora_jax.errors import AdapterMismatch
    from lora_jax.models.pretrained import load_model
    from lora_jax.run.evaluate import evaluate_run
    from lora_jax.train.checkpoint import load_adapter

    run_dir, ref = full_run
    with jax.default_matmul_precision("highest"):
        res = evaluate_run(run_dir)
    assert res["status"] == "ok", res.get("error")
    assert res["run"]["adapter"] == str(run_dir.absolute())
    assert res["metrics"]["eval"] == pytest.approx(ref["metrics"]["eval"])
    # what the engine loads (load_adapter with the full-method metadata) is the trained params
    base = load_model(str(tiny_e2e_gpt2_dir))
    meta = {"method": "full", "model_type": base.config.model_type}
    loaded = _flat(load_adapter(run_dir, base.params, expected=meta)[0])
    trained, before = _flat(_final_params(run_dir, base.params)[0]), _flat(base.params)
    assert all(np.array_equal(loaded[k], trained[k]) for k in trained)
    assert any(not np.array_equal(loaded[k], before[k]) for k in before)
    with pytest.raises(AdapterMismatch, match="method=lora"):
        load_adapter(run_dir, base.params, expected={"model": {}, "blocks": {}})
