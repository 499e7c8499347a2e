"""Sharding over a ``jax.sharding.Mesh`` with a ``data`` and an ``fsdp`` axis (config ``mesh=``).

Placement rules (all pure functions of shapes, so any pytree gets a placement):

- frozen base: every array sharded over ``fsdp`` on its largest axis that ``fsdp`` divides
  (kernels ``[in, out]``, embeddings ``[V, D]``), replicated when no axis divides (biases,
  norm scales of odd sizes, scalars); each device holds 1/fsdp of the base;
- LoRA factors and optimizer state: replicated (``lora="replicated"``, the default: they are
  small and every device needs all of them), or sharded like the base (``lora="fsdp"``);
- batch: axis 0 split over ``(data, fsdp)`` together, so every device gets its own rows (FSDP
  is data parallel over its axis too; XLA gathers the base's shards where a matmul needs them).

:func:`shard_train_step` jits ``lora_jax.train.step.make_train_step(..., jit=False)`` with these
in/out shardings (``lora``, ``opt_state`` donated); the result is numerically the single-device
step (XLA inserts the all-gathers and gradient reductions). :func:`abstract` gives the target
tree for restoring an orbax checkpoint onto any mesh (``Checkpointer.restore`` restores onto the
sharding its templates carry), :func:`prefetch_to_device` double-buffers host batches onto the
batch sharding, :func:`maybe_initialize_distributed` starts multi-host runs.
"""

from __future__ import annotations

import collections
import os
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from lora_jax.errors import ConfigError

DATA, FSDP = "data", "fsdp"
LORA_RULES = ("replicated", "fsdp")


def make_mesh(data: int = 1, fsdp: int = 1, devices: Any = None) -> Mesh:
    """A ``(data, fsdp)`` mesh over ``devices`` (default: all); -1 on one axis = the rest."""
    devices = np.asarray(jax.devices() if devices is None else devices)
    n = devices.size
    if data == -1 and fsdp == -1:
        raise ConfigError("mesh.data and mesh.fsdp cannot both be -1; set one of them")
    if data == -1 or fsdp == -1:
        known = fsdp if data == -1 else data
        if known < 1 or n % known:
            raise ConfigError(f"mesh axis of size {known} does not divide the {n} devices")
        data, fsdp = (n // known, fsdp) if data == -1 else (data, n // known)
    if data < 1 or fsdp < 1 or data * fsdp != n:
        raise ConfigError(
            f"mesh.data={data} x mesh.fsdp={fsdp} must equal the {n} devices; use -1 on one axis "
            f"for 'the rest' (e.g. mesh=fsdp, or mesh.data=2 mesh.fsdp=-1)"
        )
    return Mesh(devices.reshape(data, fsdp), (DATA, FSDP))


def fsdp_spec(shape: tuple[int, ...], fsdp: int) -> P:
    """Shard the largest axis that ``fsdp`` divides (ties: the first); replicate otherwise."""
    if fsdp == 1:
        return P()
    axes = [i for i in np.argsort([-d for d in shape], kind="stable") if shape[i] % fsdp == 0]
    if not axes:
        return P()
    spec = [None] * len(shape)
    spec[axes[0]] = FSDP
    return P(*spec)


def frozen_shardings(tree: Any, mesh: Mesh) -> Any:
    """NamedSharding per leaf of the frozen base: :func:`fsdp_spec` of its shape."""
    return jax.tree.map(
        lambda x: NamedSharding(mesh, fsdp_spec(np.shape(x), mesh.shape[FSDP])), tree
    )


def state_shardings(tree: Any, mesh: Mesh, rule: str = "replicated") -> Any:
    """NamedSharding per leaf of the LoRA tree or the optimizer state (``rule``: replicated |
    fsdp). Optimizer moments have their parameter's shape, so they land where it does."""
    if rule not in LORA_RULES:
        raise ConfigError(f"mesh.lora={rule!r} is unknown; use one of {', '.join(LORA_RULES)}")
    if rule == "replicated":
        return jax.tree.map(lambda _: NamedSharding(mesh, P()), tree)
    return frozen_shardings(tree, mesh)


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Rows (axis 0) split over data × fsdp; other axes whole."""
    return NamedSharding(mesh, P((DATA, FSDP)))


def check_batch(batch_size: int, mesh: Mesh) -> None:
    n = mesh.shape[DATA] * mesh.shape[FSDP]
    if batch_size % n:
        raise ConfigError(
            f"trainer.batch_size={batch_size} does not split over the {n} devices of the mesh "
            f"(data {mesh.shape[DATA]} x fsdp {mesh.shape[FSDP]}); use a multiple of {n}"
        )


def shard_train_step(
    step: Callable,
    mesh: Mesh,
    lora: Any,
    opt_state: Any,
    frozen: Any,
    lora_rule: str = "replicated",
) -> tuple[Callable, dict[str, Any]]:
    """Jit the unjitted ``step(lora, opt_state, frozen, batch, rng)`` for ``mesh``.

    Returns the jitted step and the shardings ``{"lora", "opt_state", "frozen", "batch"}``
    to place the inputs with (:func:`place`). Metrics come back replicated."""
    sh = {
        "lora": state_shardings(lora, mesh, lora_rule),
        "opt_state": state_shardings(opt_state, mesh, lora_rule),
        "frozen": frozen_shardings(frozen, mesh),
        "batch": batch_sharding(mesh),
    }
    replicated = NamedSharding(mesh, P())
    fn = jax.jit(
        step,
        in_shardings=(sh["lora"], sh["opt_state"], sh["frozen"], sh["batch"], replicated),
        out_shardings=(sh["lora"], sh["opt_state"], replicated),
        donate_argnums=(0, 1),
    )
    return fn, sh


def place(tree: Any, shardings: Any) -> Any:
    """``jax.device_put`` of a pytree onto a matching tree of shardings (or one sharding)."""
    return jax.device_put(tree, shardings)


def abstract(tree: Any, shardings: Any) -> Any:
    """``jax.ShapeDtypeStruct`` per leaf carrying the target sharding: the template to restore an
    orbax checkpoint onto another mesh (``Checkpointer.restore(abstract(lora, sh), ...)``)."""
    return jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=s), tree, shardings
    )


def bytes_per_device(tree: Any) -> dict[Any, int]:
    """Bytes of ``tree`` held by each addressable device (from the arrays' shards)."""
    out: dict[Any, int] = collections.Counter()
    for x in jax.tree.leaves(tree):
        for shard in x.addressable_shards:
            out[shard.device] += shard.data.nbytes
    return dict(out)


def prefetch_to_device(items: Iterable[Any], sharding: Any, size: int = 2) -> Iterator[Any]:
    """Yield ``items`` with every numpy array leaf already on the devices (:func:`global_array`
    onto ``sharding``), keeping ``size`` items in flight so the host-to-device copy of the next
    batch overlaps the current step. Non-array leaves (e.g. host token counts) pass through."""
    put = lambda x: global_array(x, sharding) if isinstance(x, np.ndarray) else x
    queue: collections.deque = collections.deque()
    it = iter(items)
    for item in it:
        queue.append(jax.tree.map(put, item))
        if len(queue) > max(size, 0):
            yield queue.popleft()
    while queue:
        yield queue.popleft()


# ----------------------------------------------------------------------------- multi-host start

# The variables a launcher sets for an explicit multi-process job (one process per host, or
# several per host on CPU): jax.distributed reads the coordinator itself; it has no variable for
# the process count and id outside the clusters it detects (SLURM, Open MPI, Cloud TPU, k8s),
# so lora-jax reads these two.
COORDINATOR, NUM_PROCESSES, PROCESS_ID = (
    "JAX_COORDINATOR_ADDRESS",
    "JAX_NUM_PROCESSES",
    "JAX_PROCESS_ID",
)
_initialized = False


def wants_distributed(env: dict[str, str] | None = None) -> bool:
    """Whether the environment describes a multi-process job."""
    env = dict(os.environ) if env is None else env
    if env.get(COORDINATOR) or env.get("MEGASCALE_COORDINATOR_ADDRESS"):
        return True
    if env.get("SLURM_JOB_ID") and int(env.get("SLURM_NTASKS", "1")) > 1:
        return True
    return "," in env.get("TPU_WORKER_HOSTNAMES", "")


def launch_rank(env: dict[str, str] | None = None) -> int:
    """This process's index in its job, read from the launcher's environment without starting
    jax (for decisions taken before :func:`maybe_initialize_distributed`, e.g. which process
    checks the run dir): ``JAX_PROCESS_ID``, SLURM's ``SLURM_PROCID`` or Cloud TPU's
    ``TPU_WORKER_ID`` in a multi-process job; 0 otherwise."""
    env = dict(os.environ) if env is None else env
    if not wants_distributed(env):
        return 0
    for key in (PROCESS_ID, "SLURM_PROCID", "TPU_WORKER_ID"):
        if env.get(key, "").strip().isdigit():
            return int(env[key])
    return 0


def _explicit_launch(env: dict[str, str]) -> dict[str, Any]:
    """``jax.distributed.initialize`` keywords from ``JAX_NUM_PROCESSES`` / ``JAX_PROCESS_ID``
    (empty when neither is set: jax's cluster detection fills them in)."""
    n, i = env.get(NUM_PROCESSES), env.get(PROCESS_ID)
    if n is None and i is None:
        return {}
    try:
        n_, i_ = int(n or ""), int(i or "")
    except ValueError:
        raise ConfigError(
            f"{NUM_PROCESSES}={n!r} and {PROCESS_ID}={i!r} must both be set, as integers "
            f"(e.g. {NUM_PROCESSES}=2 and {PROCESS_ID}=0 on the first process, 1 on the second)"
        ) from None
    if not 0 <= i_ < n_:
        raise ConfigError(f"{PROCESS_ID}={i_} must be in [0, {NUM_PROCESSES}={n_})")
    return {"num_processes": n_, "process_id": i_}


def maybe_initialize_distributed(flag: bool | None = None) -> bool:
    """``jax.distributed.initialize()`` when ``flag`` is true, or when it is None and
    :func:`wants_distributed`: the coordinator from ``JAX_COORDINATOR_ADDRESS`` (or the
    cluster: SLURM, Open MPI, Cloud TPU), the process count and id from ``JAX_NUM_PROCESSES`` /
    ``JAX_PROCESS_ID`` when set (else the cluster's). Call before any other jax use; idempotent
    within a process. Returns whether it initialised.

    On CPU, processes exchange collectives over gloo (jax's default
    ``jax_cpu_collectives_implementation``), so a multi-process run works on one machine too
    (tests/sharding/test_multiprocess.py)."""
    global _initialized
    if _initialized:
        return True
    if flag is False or (flag is None and not wants_distributed()):
        return False
    kw = _explicit_launch(dict(os.environ))
    if os.environ.get(COORDINATOR) and not kw and not wants_cluster_detection():
        raise ConfigError(
            f"{COORDINATOR} is set but this is no cluster jax detects (SLURM, Open MPI, Cloud TPU, "
            f"k8s): set {NUM_PROCESSES} (the process count) and {PROCESS_ID} (0..n-1) for each "
            "process too"
        )
    jax.distributed.initialize(**kw)
    _initialized = True
    return True


def wants_cluster_detection(env: dict[str, str] | None = None) -> bool:
    """Whether a cluster that ``jax.distributed`` detects on its own describes this job."""
    env = dict(os.environ) if env is None else env
    keys = ("SLURM_JOB_ID", "OMPI_MCA_orte_hnp_uri", "PMIX_SERVER_URI", "TPU_WORKER_HOSTNAMES",
            "MEGASCALE_COORDINATOR_ADDRESS", "KUBERNETES_SERVICE_HOST")  # fmt: skip
    return any(env.get(k) for k in keys)


def is_primary() -> bool:
    """Whether this process writes the run's files (results, predictions, W&B): process 0."""
    return jax.process_index() == 0


def global_array(x: np.ndarray, sharding: Any) -> jax.Array:
    """A global ``jax.Array`` of the host array ``x`` on ``sharding`` (a Device or a Sharding),
    each process putting only the shards of its own devices
    (``jax.make_array_from_callback``): the batch of a multi-process run, where every process
    holds the same global batch (batches are a pure function of (seed, step)) and no process
    can address the others' devices."""
    if not isinstance(x, np.ndarray) or not isinstance(sharding, jax.sharding.Sharding):
        return jax.device_put(x, sharding)
    if sharding.is_fully_addressable:
        return jax.device_put(x, sharding)
    return jax.make_array_from_callback(x.shape, sharding, lambda idx: x[idx])


def device_summary() -> dict[str, Any]:
    """What the run runs on: backend, device kind and counts, processes."""
    return {
        "backend": jax.default_backend(),
        "device_kind": jax.devices()[0].device_kind,
        "device_count": jax.device_count(),
        "local_device_count": jax.local_device_count(),
        "process_count": jax.process_count(),
        "process_index": jax.process_index(),
    }
