"""Accelerator code paths checked without an accelerator: the sharded training steps are lowered
for ``cuda`` and ``tpu`` with ``jax.export`` on this CPU machine, so a lowering rule that one
platform lacks (or an op a sharding makes illegal there) fails CI here instead of on a user's GPU.

Cases: the solo step (lora_jax.train.step.make_train_step, jitted by
lora_jax.train.sharding.shard_train_step) and the step of K = 4 stacked adapters
(lora_jax.train.packed_step.make_packed_step, jitted with the in/out shardings of
lora_jax.train.adapters.StackedAdapters.place), each on a ``data`` (8x1), ``fsdp`` (1x8) and mixed
(2x4, LoRA state fsdp-sharded) mesh. The mesh is a ``jax.sharding.AbstractMesh`` of 8 devices, so
this runs in the ordinary one-device pytest process; nothing is compiled or run, only traced and
lowered to StableHLO (with Shardy shardings) for the named platform.

The model is what an accelerator run trains by default (precision=auto on a GPU/TPU: bf16 base and
compute, fp32 LoRA and optimizer), with LoRA dropout and label smoothing on so the rng and the
smoothing branches are lowered too.

Not covered on a CPU host: tracing happens with ``jax.default_backend() == "cpu"``, so the cuDNN
attention branch that lora_jax.models.attention takes on a GPU with bf16 inputs is not traced (jax
checks for cuDNN while tracing it: "cuDNN is not detected" without the CUDA plugin), and XLA's
GPU/TPU compilers never see the module (only a device can compile it). On a GPU host the test is
skipped: there the model traces that cuDNN attention, whose custom partitioning needs the 8 real
devices to lower ("AbstractMesh cannot be used when jaxpr contains primitives that require devices
to be present during lowering", seen with jax 0.11.2 on one H200), and it has no TPU lowering.
"""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AbstractMesh, NamedSharding
from jax.sharding import PartitionSpec as P

from lora_jax.lora import LoraConfig
from lora_jax.lora import init as lora_init
from lora_jax.lora.stack import stack
from lora_jax.models import precision
from lora_jax.models.config import ModelConfig
from lora_jax.models.registry import build_model, lora_modules
from lora_jax.train import sharding
from lora_jax.train.adapters import stacked_step_shardings
from lora_jax.train.optimizer import build_optimizer
from lora_jax.train.packed_step import init_opt_state, job_hyperparams, make_packed_step
from lora_jax.train.step import make_train_step

PLATFORMS = ("cuda", "tpu")
# name -> (data, fsdp, LoRA/optimizer rule): mesh=data, mesh=fsdp, and a mixed mesh with the
# adapter state sharded too (mesh.lora=fsdp)
MESHES = {"data": (8, 1, "replicated"), "fsdp": (1, 8, "replicated"), "mixed": (2, 4, "fsdp")}
K = 4
BATCH, SEQ = 8, 16
# Llama with GQA and an untied head; every size divides by 8 so fsdp shards every kernel
CFG = ModelConfig(model_type="llama", vocab_size=256, hidden_size=64, num_layers=2, num_heads=4,
                  num_kv_heads=2, head_dim=16, intermediate_size=128, max_position_embeddings=64)  # fmt: skip
OPTIM = dict(name="adamw", lr=1e-3, b1=0.9, b2=0.999, eps=1e-6, weight_decay=0.01,
             schedule="linear", warmup_steps=2, grad_clip=1.0, grad_accum=1, label_smoothing=0.1)  # fmt: skip
TOTAL = 10

pytestmark = pytest.mark.skipif(
    jax.default_backend() == "gpu", reason="a GPU host traces cuDNN attention: see the docstring"
)
# the sharding of each argument of the exported module's main function
ARG_SHARDING = re.compile(r"%arg\d+: [^{]*\{sdy.sharding = #sdy.sharding<@mesh, ([^>]*)>")


@pytest.fixture(scope="module")
def model():
    """The module as an accelerator run builds it, its frozen base as shapes only, and K LoRA
    trees of different ranks (the stacked step pads them to the largest), all on all modules."""
    prec = precision.resolve("auto", backend="gpu")
    assert (prec.compute, prec.base) == ("bfloat16", "bfloat16")
    module = build_model(CFG, dtype=prec.compute, param_dtype=prec.base, lora_dropout=0.1)
    ids = np.zeros((1, 8), np.int32)
    frozen = jax.eval_shape(lambda: module.init(jax.random.PRNGKey(0), ids)["params"])
    trees = []
    for k, r in enumerate((8, 4, 8, 2)):
        lcfg = LoraConfig.from_dict({"r": r, "targets": "all", "seed": k})
        init = lambda k=k, c=lcfg: lora_init(jax.random.PRNGKey(k), frozen, c, lora_modules(CFG))[0]
        # host zeros of the right shapes: only lowered, and stack() reads its trees on the host
        trees.append(jax.tree.map(lambda x: np.zeros(x.shape, x.dtype), jax.eval_shape(init)))
    return module, frozen, trees


def _mesh(name: str) -> tuple[AbstractMesh, str]:
    """An 8-device mesh of the shape ``name``, its axes of the types sharding.make_mesh gives
    (AbstractMesh's own default differs across jax versions: Auto in 0.10, Explicit in 0.11)."""
    data, fsdp, rule = MESHES[name]
    types = sharding.make_mesh(1, 1, devices=jax.devices()[:1]).axis_types
    return AbstractMesh((data, fsdp), (sharding.DATA, sharding.FSDP), axis_types=types), rule


def _spec(tree, shardings):
    """ShapeDtypeStructs of ``tree`` carrying ``shardings`` (one sharding or a matching tree)."""
    if isinstance(shardings, NamedSharding):
        shardings = jax.tree.map(lambda _: shardings, tree)
    return sharding.abstract(tree, shardings)


def _batch(mesh, rows: bool = False):
    shapes = {"input_ids": np.int32, "attention_mask": np.int32, "loss_mask": np.float32}
    if rows:  # sequence packing (data.packing): segment ids and per-example positions
        shapes |= {"segment_ids": np.int32, "positions": np.int32}
    batch = {k: jax.ShapeDtypeStruct((BATCH, SEQ), d) for k, d in shapes.items()}
    sharding.check_batch(BATCH, mesh)
    return _spec(batch, sharding.batch_sharding(mesh))


def _solo(model, mesh, rule, rows: bool = False):
    """``shard_train_step`` of the solo step, and its arguments as sharded shapes."""
    module, frozen, trees = model
    lora = trees[0]
    tx, _ = build_optimizer(OPTIM, lora, TOTAL)
    opt = jax.eval_shape(tx.init, lora)
    step = make_train_step(module, tx, label_smoothing=0.1, dropout=True, jit=False)
    fn, sh = sharding.shard_train_step(step, mesh, lora, opt, frozen, rule)
    rep = NamedSharding(mesh, P())
    args = (_spec(lora, sh["lora"]), _spec(opt, sh["opt_state"]), _spec(frozen, sh["frozen"]),
            _batch(mesh, rows), _spec(jax.eval_shape(lambda: jax.random.PRNGKey(0)), rep))  # fmt: skip
    return fn, args


def _packed(model, mesh, rule, rows: bool = False):
    """The stacked step of K jobs jitted as StackedAdapters.place jits it (the batch over the
    mesh, the frozen base by frozen_shardings, LoRA and optimizer state by state_shardings, the
    rest replicated), and its arguments as sharded shapes."""
    module, frozen, trees = model
    lora, mask = stack(trees)
    cfgs = [dict(OPTIM, lr=OPTIM["lr"] * (k + 1), grad_clip=None if k % 2 else 1.0,
                 label_smoothing=0.1 * k) for k in range(K)]  # fmt: skip
    lr_fns = [build_optimizer(c, t, TOTAL)[1] for c, t in zip(cfgs, trees)]
    hp = job_hyperparams(cfgs, lr_fns, TOTAL)
    opt = jax.eval_shape(lambda lo, h: init_opt_state(lo, h, 1), lora, hp)
    keys = jax.eval_shape(lambda: jnp.stack([jax.random.PRNGKey(k) for k in range(K)]))
    ok = jax.ShapeDtypeStruct((K,), jnp.bool_)
    step = make_packed_step(module, dropout=True, jit=False)

    ins, outs = stacked_step_shardings(lora, opt, frozen, mesh, rule)  # what a run jits with
    fn = jax.jit(step, in_shardings=ins, out_shardings=outs, donate_argnums=(0, 1, 2))
    args = tuple(_spec(x, s) for x, s in zip((lora, opt, ok, mask, hp, keys, frozen), ins[:7]))
    args += (_batch(mesh, rows), jax.ShapeDtypeStruct((), jnp.int32, sharding=ins[8]))
    return fn, args


STEPS = {"solo": _solo, "packed": _packed}


@pytest.mark.parametrize("platform", PLATFORMS)
@pytest.mark.parametrize("mesh_name", list(MESHES))
@pytest.mark.parametrize("kind", list(STEPS))
def test_train_step_lowers_for_accelerator(model, kind, mesh_name, platform):
    mesh, rule = _mesh(mesh_name)
    fn, args = STEPS[kind](model, mesh, rule)
    exported = jax.export.export(fn, platforms=(platform,))(*args)

    # lowered for that platform alone, as an 8-device SPMD program
    assert exported.platforms == (platform,)
    assert exported.nr_devices == 8
    flat = jax.tree.leaves(args)
    assert len(exported.in_avals) == len(flat)
    for got, want in zip(exported.in_shardings_jax(mesh), flat):
        assert got is not None, want
        assert got.is_equivalent_to(want.sharding, len(want.shape)), (got, want)
    # the module itself carries the mesh and the shardings the step was jitted with
    text = exported.mlir_module()
    data, fsdp = mesh.shape[sharding.DATA], mesh.shape[sharding.FSDP]
    assert f'sdy.mesh @mesh = <["data"={data}, "fsdp"={fsdp}]>' in text
    main = next(line for line in text.splitlines() if "func.func public @main(" in line)
    arg_shardings = ARG_SHARDING.findall(main)
    assert len(arg_shardings) == len(exported.module_kept_var_idx)
    batch_rows = '[{"data", "fsdp"}, {}]'
    assert arg_shardings.count(batch_rows) == 3  # input_ids, attention_mask, loss_mask
    frozen_leaves = jax.tree.leaves(model[1])
    n_sharded = sum(sharding.fsdp_spec(x.shape, fsdp) != P() for x in frozen_leaves)
    assert (n_sharded > 0) == (fsdp > 1)
    on_fsdp = sum('{"fsdp"}' in s for s in arg_shardings)
    # the frozen base (and with mesh.lora=fsdp the LoRA and optimizer state) split over fsdp
    assert on_fsdp >= n_sharded and (rule == "fsdp") == (on_fsdp > n_sharded)
    assert "__cudnn$fmha" not in text  # the XLA attention: see the module docstring
    # under the bf16 policy the step still returns float32 LoRA, optimizer state and metrics
    assert exported.out_avals and all(a.dtype != jnp.bfloat16 for a in exported.out_avals)


@pytest.mark.parametrize("platform", PLATFORMS)
@pytest.mark.parametrize("kind", list(STEPS))
def test_packed_rows_step_lowers_for_accelerator(model, kind, platform):
    """Sequence packing's batches (segment ids, per-example positions: the attention mask is
    built inside the step) lower for the platform with rows split over the data axis."""
    mesh, rule = _mesh("data")
    fn, args = STEPS[kind](model, mesh, rule, rows=True)
    exported = jax.export.export(fn, platforms=(platform,))(*args)
    assert exported.platforms == (platform,) and exported.nr_devices == 8
    main = next(line for line in exported.mlir_module().splitlines()
                if "func.func public @main(" in line)  # fmt: skip
    # input_ids, loss_mask, segment_ids, positions (attention_mask only counts tokens on host)
    assert ARG_SHARDING.findall(main).count('[{"data", "fsdp"}, {}]') >= 4
