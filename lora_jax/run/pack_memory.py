"""Pack size from the compiled step's memory: ``hydra.launcher.pack_size=auto``.

For one group of packable jobs (lora_jax.run.packs), the packed step (lora_jax.train.packed_step,
with the group's ``trainer.remat`` / ``scan`` / ``loss_chunk``) is lowered and compiled for
abstract inputs (``jax.ShapeDtypeStruct``: K adapters in the group's union layout, the largest
batch shape ``[trainer.batch_size, task.max_len]``; with ``data.pack=step`` the step's rows at
their longest, every example at max_len), and XLA's ``compiled.memory_analysis()``
gives its bytes: arguments + outputs − donated aliases + temporaries (:class:`StepMemory`).
The bytes are close to affine in K (the frozen base and the batch once, each adapter's
parameters, optimizer moments and activations K times), so the step is compiled at K = 1 and 2,
the largest K under the budget is extrapolated, and that K is verified by one more compile
(and while the line through the last two compiles picks another K, that one: at most
``MAX_COMPILES``). On the tiny GPT-2
(batch 4 x 128) K = 1, 2, 3 take 11.1, 26.3, 39.3 MiB: K = 1 below the line through K = 2 and
3, so the fit through K = 1 and 2 errs on the small side.

Budget: ``hydra.launcher.memory_budget_bytes`` when set, else ``memory_fraction`` of the
device's ``memory_stats()["bytes_limit"]`` (GPU/TPU) or, on CPU, of the host's available memory
(``MemAvailable`` in /proc/meminfo). Not counted: the multi-adapter decode (its KV cache grows
with K × ``task.decode.batch_size`` rows) and host-side copies; the fraction leaves room for them.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from omegaconf import DictConfig, OmegaConf

from lora_jax.console import console
from lora_jax.errors import ConfigError
from lora_jax.lora.stack import stack
from lora_jax.train.packed_step import HP_KEYS, init_opt_state, make_packed_step

MIB = 1 << 20
MAX_COMPILES = 6  # per group, in choose_pack_size


@dataclasses.dataclass(frozen=True)
class StepMemory:
    """Bytes of one compiled step (XLA's memory analysis)."""

    argument: int
    output: int
    alias: int  # outputs written in place of donated arguments
    temp: int

    @property
    def total(self) -> int:
        """Peak estimate: live arguments and outputs (donated ones once) plus temporaries."""
        return self.argument + self.output - self.alias + self.temp


def _abstract(tree: Any, k: int | None = None) -> Any:
    """ShapeDtypeStructs of ``tree``'s leaves; with ``k``, the leading axis set to K."""
    return jax.tree.map(
        lambda x: jax.ShapeDtypeStruct((x.shape if k is None else (k, *x.shape[1:])), x.dtype),
        tree,
    )


def step_memory(
    module: Any,
    frozen: Any,
    trees: Sequence[Any],
    k: int,
    batch_shape: tuple[int, int],
    *,
    grad_accum: int = 1,
    dropout: bool = False,
    loss_chunk: int | None = None,
    scan_prefix: str | None = None,
    packed_rows: bool = False,
) -> StepMemory:
    """Memory of the packed step compiled for ``k`` adapters laid out as the union of
    ``trees`` (each slot at the largest rank any tree gives it). ``frozen``: the base in the
    step's layout (stacked with ``scan_prefix``), arrays or ShapeDtypeStructs; ``batch_shape``:
    ``[B, T]`` (with ``packed_rows``: B rows of packed examples). Nothing is run."""
    union, _ = stack(trees, shapes_only=True)
    lora = _abstract(union, k)
    dt = jnp.float32  # lora_jax.train.packed_step.job_hyperparams
    hp = {n: jax.ShapeDtypeStruct((k,), dt) for n in HP_KEYS}
    hp["lr"] = jax.ShapeDtypeStruct((k, 2), dt)
    opt = jax.eval_shape(lambda lo, h: init_opt_state(lo, h, grad_accum), lora, hp)
    b, t = batch_shape
    batch = {"input_ids": jax.ShapeDtypeStruct((b, t), jnp.int32),
             "attention_mask": jax.ShapeDtypeStruct((b, t), jnp.int32),
             "loss_mask": jax.ShapeDtypeStruct((b, t), jnp.float32)}  # fmt: skip
    if packed_rows:  # the [B, 1, T, T] segment mask is part of the step's memory
        batch |= {"segment_ids": jax.ShapeDtypeStruct((b, t), jnp.int32),
                  "positions": jax.ShapeDtypeStruct((b, t), jnp.int32)}  # fmt: skip
    keys = jax.ShapeDtypeStruct((k, 2), jnp.uint32)  # jax.random.PRNGKey per job
    ok = jax.ShapeDtypeStruct((k,), jnp.bool_)
    step = make_packed_step(module, grad_accum=grad_accum, dropout=dropout,
                            loss_chunk=loss_chunk, scan_prefix=scan_prefix)  # fmt: skip
    compiled = step.lower(lora, opt, ok, lora, hp, keys, _abstract(frozen), batch, 0).compile()
    ma = compiled.memory_analysis()
    return StepMemory(int(ma.argument_size_in_bytes), int(ma.output_size_in_bytes),
                      int(ma.alias_size_in_bytes), int(ma.temp_size_in_bytes))  # fmt: skip


@dataclasses.dataclass(frozen=True)
class PackSizing:
    """The decision: ``k`` adapters per pack; ``base`` + ``per_adapter`` · K bytes (the fit);
    ``measured``: K -> total bytes of every compile made."""

    k: int
    per_adapter: int
    base: int
    budget: int
    measured: dict[int, int]


def choose_pack_size(measure: Callable[[int], int], budget: int, n_jobs: int) -> PackSizing:
    """The largest K <= ``n_jobs`` whose compiled step (``measure(K)``: total bytes) fits
    ``budget``: compiled at K = 1 and 2, K extrapolated from the line through them and verified
    by one more compile. The bytes are not exactly affine: while the line through the largest
    fitting K and the last one compiled picks another K (above a fitting one: the bytes grew
    slower; below one that did not fit: faster, then at least one more than the largest fitting
    K), that K is compiled too, at most ``MAX_COMPILES`` compiles in all."""
    if n_jobs < 1:
        raise ValueError("no jobs to size a pack for")
    seen: dict[int, int] = {1: measure(1)}
    if seen[1] > budget:
        raise ConfigError(
            f"even one adapter does not fit: the packed step needs {seen[1] / MIB:.1f} MiB, the "
            f"budget is {budget / MIB:.1f} MiB. Lower trainer.batch_size or task.max_len, set "
            "trainer.remat=full / trainer.loss_chunk, or raise hydra.launcher.memory_fraction "
            "(or set hydra.launcher.memory_budget_bytes)"
        )
    if n_jobs > 1:
        seen[2] = measure(2)
    fits = max(k for k, b in seen.items() if b <= budget)
    over = min([k for k, b in seen.items() if b > budget] + [n_jobs + 1])
    lo, hi = (1, 2) if n_jobs > 1 else (1, 1)
    per = max((seen[hi] - seen[lo]) // max(hi - lo, 1), 1)
    k = min(over - 1, fits + (budget - seen[fits]) // per)  # the line's pick
    while k > fits and len(seen) < MAX_COMPILES:
        seen[k] = measure(k)
        lo, hi = fits, k  # the next line: through the largest fitting K and this one
        if seen[k] <= budget:
            fits = k
        else:
            over = k
        per = max((seen[hi] - seen[lo]) // (hi - lo), 1)
        k = min(over - 1, fits + (budget - seen[fits]) // per)
        if over == hi:  # after an overshoot, always one more than the largest fitting K
            k = max(k, fits + 1)
    return PackSizing(fits, per, seen[lo] - per * lo, budget, seen)


def memory_budget(fraction: float, explicit: int | None = None) -> tuple[int, str]:
    """(bytes, where they come from): ``explicit`` as is, else ``fraction`` of the device's
    memory limit (GPU/TPU) or of the host's available memory (CPU)."""
    if explicit is not None:
        if int(explicit) < 1:
            raise ConfigError(
                f"hydra.launcher.memory_budget_bytes must be positive; got {explicit}"
            )
        return int(explicit), "hydra.launcher.memory_budget_bytes"
    if not 0.0 < float(fraction) <= 1.0:
        raise ConfigError(f"hydra.launcher.memory_fraction must be in (0, 1]; got {fraction}")
    dev = jax.devices()[0]
    stats = dev.memory_stats() if dev.platform != "cpu" else None
    if stats and stats.get("bytes_limit"):
        return int(fraction * stats["bytes_limit"]), f"{fraction} x {dev.device_kind} bytes_limit"
    return int(fraction * _host_available()), f"{fraction} x host MemAvailable"


def _host_available() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def group_step_memory(cfgs: Sequence[DictConfig]) -> Callable[[int], StepMemory]:
    """``K -> StepMemory`` for one group of packable jobs (configs as the launcher composes
    them): the model loaded once, each job's LoRA tree built as its pack builds it (jobs whose
    LoRA config fails are left out: they fail in the pack), the step as the runner builds it."""
    from lora_jax.lora import LoraConfig
    from lora_jax.lora import init as lora_init
    from lora_jax.models.pretrained import load_for_run as load_base
    from lora_jax.models.registry import lora_modules
    from lora_jax.tasks.batching import default_buckets, linear_buckets, step_row_len
    from lora_jax.train.data import packing, row_multiple, step_multiple
    from lora_jax.train.state import layer_layout

    cfg0 = cfgs[0]
    lm = load_base(cfg0)
    trees = []
    for c in cfgs:
        lora = OmegaConf.to_container(c.lora)
        try:
            lcfg = LoraConfig.from_dict(lora | {"seed": c.seed})
            tree, _ = lora_init(
                jax.random.PRNGKey(c.seed), lm.params, lcfg, lora_modules(lm.config)
            )
        except Exception:
            continue
        trees.append(tree)
    if not trees:
        raise ConfigError("no job of this group has a valid LoRA config")
    tcfg = cfg0.trainer
    # the runner's training module and base layout (scan: lm.params stacked, lm is ours)
    module, prefix = layer_layout(cfg0, lm)
    frozen = _abstract(lm.params)
    buckets = (default_buckets(cfg0.task.max_len) if tcfg.get("bucket_step") is None
               else linear_buckets(cfg0.task.max_len, tcfg.bucket_step))  # fmt: skip
    # packed rows (data.packing): at most one row per example, the same largest shape
    shape = (int(tcfg.batch_size), int(max(buckets)))
    multiple = step_multiple(cfg0) if packing(cfg0) else None
    if multiple is not None:
        # data.pack=step: the whole step in row_multiple rows (tasks.batching.pack_step), at
        # their longest when every example is max_len tokens long
        rows = row_multiple(cfg0)
        shape = (rows, step_row_len([shape[1]] * shape[0], rows, multiple))
    kw = dict(grad_accum=int(cfg0.optim.grad_accum), dropout=cfg0.lora.dropout > 0,
              loss_chunk=tcfg.get("loss_chunk"), scan_prefix=prefix,
              packed_rows=packing(cfg0))  # fmt: skip
    return lambda k: step_memory(module, frozen, trees, k, shape, **kw)


def auto_packs(
    cfgs: Sequence[DictConfig],
    groups: Sequence[Sequence[int]],
    fraction: float = 0.8,
    budget_bytes: int | None = None,
) -> list[list[int]]:
    """``groups`` (job indices, e.g. make_packs with an unbounded pack size) cut into packs of
    the size :func:`choose_pack_size` finds for each; the decision is printed."""
    budget, source = memory_budget(fraction, budget_bytes)
    packs: list[list[int]] = []
    for group in groups:
        measure = group_step_memory([cfgs[i] for i in group])
        s = choose_pack_size(lambda k, m=measure: m(k).total, budget, len(group))
        measured = ", ".join(f"K={k}: {b / MIB:.1f}" for k, b in sorted(s.measured.items()))
        names = ", ".join(str(cfgs[i].name) for i in group[:3]) + (
            ", ..." if len(group) > 3 else ""
        )
        console.print(
            f"pack size auto: K={s.k} for {len(group)} job(s) ({names}); compiled step MiB "
            f"{measured}, ~{s.per_adapter / MIB:.2f} MiB per adapter; budget {budget / MIB:.1f} "
            f"MiB ({source})"
        )
        packs += [list(group[lo : lo + s.k]) for lo in range(0, len(group), s.k)]
    return sorted(packs, key=lambda p: p[0])
