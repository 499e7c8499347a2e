"""Time lora-jax's full jitted train step and count its FLOPs and memory.

FLOPs per token, written out (N_f = frozen matmul weights incl. the LM head, N_a = adapter
weights Σ r·(in+out), L layers, H·hd attention width, T sequence length):

    LoRA step:  4·N_f  (forward 2N_f + activation gradient 2N_f; no weight gradient of W)
              + 6·N_a  (forward, activation and weight gradients of A and B)
              + 12·L·T·H·hd  (attention: QKᵀ and PV, 2·2·T·H·hd forward, ×3 with backward)
    full FT:    6·N_f + 12·L·T·H·hd

The attention term counts the whole T×T square, as XLA computes it (the causal half is masked,
not skipped). MFU = formula FLOPs/token × tokens/s ÷ peak FLOP/s of the device.
"""

from __future__ import annotations

import resource
import statistics
import time
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

import lora_jax.lora as L
from lora_jax.bench.cases import Case, gguf_path
from lora_jax.errors import ConfigError
from lora_jax.models.config import ModelConfig
from lora_jax.models.registry import build_model, lora_modules
from lora_jax.quant import frozen_bytes, quantize_params
from lora_jax.train.step import make_full_finetune_step, make_train_step

# dense bf16 peak FLOP/s per device kind (vendor data sheets; SXM parts)
PEAK_FLOPS = {
    "NVIDIA H100 80GB HBM3": 989e12,
    "NVIDIA H100": 989e12,
    "NVIDIA H200": 989e12,
    "NVIDIA A100-SXM4-80GB": 312e12,
    "NVIDIA A100-SXM4-40GB": 312e12,
    "TPU v4": 275e12,
    "TPU v5 lite": 197e12,
    "TPU v5p": 459e12,
}


@dataclass
class Result:
    case: str
    step_s: float
    tokens_per_s: float
    trainable: int
    flops_xla: float  # per step, XLA cost analysis of the compiled step
    flops_formula: float  # per step, the formula above
    peak_bytes: float | None  # device peak (memory_stats) or compiled args+temp+outputs
    peak_source: str
    host_rss_mib: float
    mfu: float | None
    loss: float
    frozen_bytes: int = 0  # resident frozen base (packed bytes when quantized)
    real_fraction: float = 1.0  # real tokens / token positions computed (real batches)
    shapes: int = 1  # distinct batch shapes compiled


def peak_flops(device: Any, given: float | None) -> float | None:
    if given:
        return given
    return PEAK_FLOPS.get(getattr(device, "device_kind", ""))


def formula_flops(cfg: ModelConfig, frozen: dict, lora: dict | None, tokens: int, seq: int):
    """Per-step FLOPs by the formula in the module docstring."""
    flat = jax.tree_util.tree_flatten_with_path(frozen)[0]
    n_f = sum(
        int(np.prod(x.shape))
        for p, x in flat
        if x.ndim == 2 and p[-1].key == "kernel"  # Dense kernels [in, out]
    )
    n_f += cfg.hidden_size * cfg.vocab_size  # the LM head (tied or not)
    attn = 12 * cfg.num_layers * seq * cfg.num_heads * cfg.head_dim
    if lora is None:
        return tokens * (6 * n_f + attn)
    n_a = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(lora) if x.ndim == 2)
    return tokens * (4 * n_f + 6 * n_a + attn)


def _model(case: Case, cfg: ModelConfig | None, dtype: str, param_dtype: str, remat: str):
    if cfg is None:  # a real checkpoint (SmolLM2, Gemma 3) from its GGUF
        from lora_jax.models.pretrained import load_model

        lm = load_model(gguf_path(case), dtype, param_dtype)
        return lm.module.clone(remat=remat), lm.params, lm.config, lm.tokenizer
    module = build_model(cfg, dtype, param_dtype).clone(remat=remat)
    ids = jnp.zeros((1, 8), jnp.int32)
    params = jax.jit(module.init)(jax.random.key(0), ids)["params"]
    return module, params, cfg, None


def run_case(
    case: Case,
    cfg: ModelConfig | None,
    *,
    dtype: str = "float32",
    param_dtype: str = "float32",
    remat: str = "none",
    loss_chunk: int | None = None,
    warmup: int = 2,
    repeats: int = 5,
    peak: float | None = None,
    quant: str = "none",
    data: Any = None,
    packed_block: int | None = None,
) -> Result:
    """Build, compile, warm up and time ``repeats`` steps of ``case``; median step time.
    ``quant`` (nf4 | int8): the adapted model's frozen kernels stored quantized (QLoRA).
    ``data(tokenizer) -> [batch, ...]`` (real batches, lora_jax.bench.e2e): instead of one
    random full batch, every shape the batches have is compiled, then all of them are timed
    ``repeats`` times over; tokens/s counts real (non-padding) tokens, ``real_fraction`` the
    share of real tokens among the positions computed. ``packed_block``: the model's
    ``packed_block`` (data.pack=step rows attended in blocks of the longest example)."""
    module, params, mcfg, tok = _model(case, cfg, dtype, param_dtype, remat)
    if packed_block is not None:
        module = module.clone(cfg=module.cfg.replace(packed_block=packed_block))
    shapes = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), params)  # for FLOPs
    if quant != "none":
        if case.full:
            raise ConfigError("--quant applies to LoRA cases only (a quantized base is frozen)")
        params = quantize_params(params, quant, lora_modules(mcfg))
    rng = np.random.default_rng(0)
    ids = rng.integers(0, mcfg.vocab_size, (case.batch, case.seq)).astype(np.int32)
    batch = {
        "input_ids": jnp.asarray(ids),
        "attention_mask": jnp.ones(ids.shape, jnp.int32),
        "loss_mask": jnp.ones(ids.shape, jnp.float32),
    }
    adamw = optax.adamw(2e-4, b1=0.9, b2=0.999, eps=1e-6, weight_decay=0.01)
    key = jax.random.key(0)
    if case.full:
        lora = None
        params = jax.tree.map(lambda x: x.astype(jnp.float32), params)  # trained in fp32
        tx = adamw
        state = [params, tx.init(params)]
        step = make_full_finetune_step(module, tx, loss_chunk=loss_chunk)
        trainable = sum(x.size for x in jax.tree.leaves(params))
        args = lambda: (state[0], state[1], batch)  # noqa: E731
    else:
        lcfg = L.LoraConfig(r=case.r, alpha=2 * case.r, targets=list(case.targets))
        lora, _ = L.init(jax.random.key(1), params, lcfg, lora_modules(mcfg))
        tx = L.make_optimizer(adamw, lora)
        state = [lora, tx.init(lora)]
        step = make_train_step(module, tx, loss_chunk=loss_chunk)
        trainable = L.count_trainable(lora)
        args = lambda: (state[0], state[1], params, batch, key)  # noqa: E731

    if data is not None:
        return _run_batches(case, mcfg, shapes, lora, params, state, step, data(tok),
                            trainable, repeats, quant=quant, full=case.full, key=key)  # fmt: skip
    compiled = step.lower(*args()).compile()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    mem = compiled.memory_analysis()

    def once() -> float:
        state[0], state[1], m = compiled(*args())
        return float(jax.block_until_ready(m["loss"]))

    for _ in range(warmup):
        loss = once()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        loss = once()
        times.append(time.perf_counter() - t0)
    step_s = statistics.median(times)
    tokens = case.batch * case.seq
    device = jax.devices()[0]
    stats = device.memory_stats() if hasattr(device, "memory_stats") else None
    if stats and "peak_bytes_in_use" in stats:
        peak_bytes, source = float(stats["peak_bytes_in_use"]), "device peak_bytes_in_use"
    else:
        parts = ("argument_size_in_bytes", "output_size_in_bytes", "temp_size_in_bytes")
        peak_bytes = float(sum(getattr(mem, p) for p in parts)) if mem else None
        source = "compiled args+outputs+temp"
    flops_f = formula_flops(mcfg, shapes, lora, tokens, case.seq)
    pk = peak_flops(device, peak)
    return Result(
        case=case.name,
        step_s=step_s,
        tokens_per_s=tokens / step_s,
        trainable=int(trainable),
        flops_xla=float(cost.get("flops", float("nan"))),
        flops_formula=float(flops_f),
        peak_bytes=peak_bytes,
        peak_source=source,
        host_rss_mib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        mfu=None if pk is None else flops_f / step_s / pk,
        loss=loss,
        frozen_bytes=int(frozen_bytes(params)["bytes"]),
    )


def _run_batches(case, mcfg, shapes, lora, params, state, step, batches, trainable, repeats, *,
                 quant, full, key) -> Result:  # fmt: skip
    """:func:`run_case` over real batches: compile each distinct shape once (one warm-up pass),
    then time ``repeats`` passes over all of them; median pass time."""
    dev = [jax.device_put(b) for b in batches]

    def one(b):
        if full:
            state[0], state[1], m = step(state[0], state[1], b)
        else:
            state[0], state[1], m = step(state[0], state[1], params, b, key)
        return m

    for b in dev:  # compiles every shape
        m = one(b)
    jax.block_until_ready(m["loss"])
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for b in dev:
            m = one(b)
        loss = float(jax.block_until_ready(m["loss"]))
        times.append(time.perf_counter() - t0)
    pass_s = statistics.median(times)
    real = sum(int(b["attention_mask"].sum()) for b in batches)
    positions = sum(int(b["input_ids"].size) for b in batches)
    seq = max(b["input_ids"].shape[1] for b in batches)
    return Result(
        case=case.name,
        step_s=pass_s / len(batches),
        tokens_per_s=real / pass_s,
        trainable=int(trainable),
        flops_xla=float("nan"),
        flops_formula=float(formula_flops(mcfg, shapes, lora, positions, seq)),
        peak_bytes=None,
        peak_source="n/a (several shapes)",
        host_rss_mib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        mfu=None,
        loss=loss,
        frozen_bytes=int(frozen_bytes(params)["bytes"]),
        real_fraction=real / positions,
        shapes=len({b["input_ids"].shape for b in batches}),
    )
