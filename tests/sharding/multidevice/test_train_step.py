"""The sharded train step equals the single-device step (fp32, highest matmul precision) on data,
fsdp and mixed meshes, and the frozen base takes 1/N of its bytes on each device."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from lora_jax.train import sharding
from lora_jax.train.step import make_train_step
from tests.sharding.multidevice.conftest import FAMILIES, OPTIM, make_setup

MESHES = {"data": (8, 1), "fsdp": (1, 8), "mixed": (2, 4)}


def _reference(setup):
    module, frozen, lora, tx, batch = setup
    with jax.default_matmul_precision("highest"):
        one = jax.devices()[0]
        put = lambda t: jax.device_put(t, one)
        fn = make_train_step(module, tx)
        return _steps(fn, put(lora), put(tx.init(lora)), put(frozen), batch)


def _sharded(setup, name, rule):
    module, frozen, lora, tx, batch = setup
    mesh = sharding.make_mesh(*MESHES[name])
    with jax.default_matmul_precision("highest"):
        step = make_train_step(module, tx, jit=False)
        opt = tx.init(lora)
        fn, sh = sharding.shard_train_step(step, mesh, lora, opt, frozen, rule)
        args = (sharding.place(lora, sh["lora"]), sharding.place(opt, sh["opt_state"]),
                sharding.place(frozen, sh["frozen"]))  # fmt: skip
        return _steps(fn, *args, sharding.place(batch, sh["batch"]))


def _assert_equal_steps(got, reference, lora0, tol=1e-5):
    ref_l, ref_o, ref_m = reference
    lo, o, m = got
    for k in ("loss", "grad_norm"):
        assert abs(float(m[k]) - float(ref_m[k])) <= 1e-5 * abs(float(ref_m[k])), k
    # Adam's moments are linear in g and g²: the elementwise gradient check, to tol of the
    # largest (reduction order moves fp32 sums by rounding; a wrong sharding moves them by O(1)).
    for x, y in zip(jax.tree.leaves(o), jax.tree.leaves(ref_o)):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=tol * float(np.abs(y).max()))
    # The params: Adam's g/√v turns rounding-level differences in gradients near eps into
    # differences of a small fraction of the step (lr), so the tolerance adds 1e-3·lr.
    for x, y in zip(jax.tree.leaves(lo), jax.tree.leaves(ref_l)):
        atol = tol * float(np.abs(y).max()) + 1e-3 * OPTIM["lr"]
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=atol)
    # the step moved the LoRA params (a no-op step would pass the comparison too)
    assert any(not np.allclose(x, y) for x, y in zip(jax.tree.leaves(lo), jax.tree.leaves(lora0)))


def _steps(fn, lora, opt, frozen, batch, n=2):
    key = jax.random.PRNGKey(3)
    for i in range(n):
        lora, opt, m = fn(lora, opt, frozen, batch, jax.random.fold_in(key, i))
    return jax.device_get((lora, opt, m))


@pytest.fixture(scope="module")
def reference(setup):
    return _reference(setup)


@pytest.mark.parametrize(
    "name, rule", [("data", "replicated"), ("fsdp", "replicated"), ("mixed", "fsdp")]
)
def test_sharded_step_equals_single_device(setup, reference, name, rule):
    _assert_equal_steps(_sharded(setup, name, rule), reference, setup[2])


@pytest.mark.parametrize("family", list(FAMILIES))
def test_each_family_sharded_equals_single_device(family):
    """The mixed mesh (2 data x 4 fsdp, LoRA state fsdp-sharded too) on Qwen2, Gemma 2, Gemma 3
    and Phi-3: their extra parameters (biases, q/k and sandwich norms) shard by the same rules.
    Moments and params to 1e-4 of the largest (the Llama test's 1e-5 times ten): Gemma's tanh
    soft-capping, √d-scaled embeddings and sandwich norms amplify the reduction-order rounding
    (measured: up to 3e-5 of the largest on single elements of Gemma 2/3's moments and params)."""
    setup = make_setup(FAMILIES[family])
    _assert_equal_steps(_sharded(setup, "mixed", "fsdp"), _reference(setup), setup[2], 1e-4)


def test_frozen_bytes_per_device_are_one_nth(setup):
    _, frozen, *_ = setup
    total = sum(x.nbytes for x in jax.tree.leaves(frozen))
    for data, fsdp in ((1, 8), (2, 4)):
        mesh = sharding.make_mesh(data, fsdp)
        placed = sharding.place(frozen, sharding.frozen_shardings(frozen, mesh))
        per_dev = sharding.bytes_per_device(placed)
        assert len(per_dev) == 8
        # every frozen array of this model has an axis divisible by 8: exactly total / fsdp
        assert set(per_dev.values()) == {total // fsdp}, (per_dev, total)


def test_lora_placement_rules(setup):
    _, _, lora, *_ = setup
    mesh = sharding.make_mesh(2, 4)
    rep = sharding.place(lora, sharding.state_shardings(lora, mesh, "replicated"))
    fs = sharding.place(lora, sharding.state_shardings(lora, mesh, "fsdp"))
    total = sum(x.nbytes for x in jax.tree.leaves(lora))
    assert set(sharding.bytes_per_device(rep).values()) == {total}
    # A [in, 8] and B [8, out] split on their large dim; the scalar scales stay whole
    scalars = sum(x.nbytes for x in jax.tree.leaves(lora) if x.ndim == 0)
    assert set(sharding.bytes_per_device(fs).values()) == {(total - scalars) // 4 + scalars}
    with pytest.raises(ValueError, match="mesh.lora"):
        sharding.state_shardings(lora, mesh, "columns")


def test_batch_split_and_bad_mesh_errors(setup):
    *_, batch = setup
    mesh = sharding.make_mesh(2, -1)
    assert dict(mesh.shape) == {"data": 2, "fsdp": 4}
    placed = sharding.place(batch, sharding.batch_sharding(mesh))
    shards = placed["input_ids"].addressable_shards
    assert len(shards) == 8 and {s.data.shape for s in shards} == {(1, 16)}
    with pytest.raises(ValueError, match="batch_size=6"):
        sharding.check_batch(6, mesh)
    with pytest.raises(ValueError, match="must equal the 8 devices"):
        sharding.make_mesh(3, 2)


def test_prefetch_puts_batches_on_the_mesh(setup):
    *_, batch = setup
    sh = sharding.batch_sharding(sharding.make_mesh(8, 1))
    items = [(i, {k: v + i for k, v in batch.items()}) for i in range(5)]
    out = list(sharding.prefetch_to_device(iter(items), sh, size=2))
    assert [i for i, _ in out] == list(range(5))
    for i, b in out:
        assert b["input_ids"].sharding == sh
        np.testing.assert_array_equal(np.asarray(b["input_ids"]), batch["input_ids"] + i)
