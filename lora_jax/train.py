"""The training app: ``python -m lora_jax.train [overrides]`` (console script lora-jax-train).

One run, top to bottom: compose the Hydra config (conf/) → load the frozen model → init the
LoRA tree and its optimizer from the trainable/frozen labels → tokenize and bucket the task →
jitted train steps (LoRA grads only; host syncs only at log points) with orbax checkpoints of
(lora, opt_state, step) → decode + task metrics before and after → ``results.json``,
``predictions.txt`` and W&B. A failing run still writes ``results.json`` (status "failed");
in a multirun the sweep goes on.
"""

from __future__ import annotations

import contextlib
import math
import resource
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import hydra
import jax
import jax.numpy as jnp
import numpy as np
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from lora_jax import precision as precision_policy
from lora_jax import record, sharding
from lora_jax import schema as config_schema
from lora_jax.checkpoint import (
    AdapterMismatch,
    Checkpointer,
    CheckpointError,
    adapter_meta,
    load_adapter,
    run_fingerprint,
)
from lora_jax.config_check import ConfigError, check_config, check_model_fit
from lora_jax.evaluate import evaluate
from lora_jax.lora import LoraConfig, param_report
from lora_jax.lora import init as lora_init
from lora_jax.models.pretrained import load_model
from lora_jax.models.registry import lora_modules
from lora_jax.optimizer import build_optimizer
from lora_jax.runguard import PREEMPTION, Preempted, RunDirInUse, RunDirLock, SweepStatus
from lora_jax.step import make_eval_loss, make_train_step
from lora_jax.tasks import get_task
from lora_jax.tasks.batching import TrainBatches, default_buckets, linear_buckets
from lora_jax.tasks.formatting import encode_example
from lora_jax.tasks.sample import write_e2e_sample
from lora_jax.tracking import Tracker, console
from lora_jax.validation import validation_batches, validation_loss

CONF_DIR = str(config_schema.conf_dir())


class NonFiniteLoss(RuntimeError):
    pass


# Errors that mean a bad input or config, each with a message naming the fix: a single run
# prints the message and exits 1 without a Python traceback (results.json keeps it).
USER_ERRORS = (ConfigError, CheckpointError, AdapterMismatch, RunDirInUse, NonFiniteLoss,
               FileNotFoundError, ValueError)  # fmt: skip


def run(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    """Train and evaluate one configuration; returns the run record (lora_jax/record.py), also
    written to ``run_dir/results.json``.

    The run dir is locked for the run (two processes never share one); a dir that holds
    another run's checkpoints is refused before anything is written (``trainer.resume=true``
    continues it when its stored config matches); resuming a finished run returns its record.
    """
    sharding.maybe_initialize_distributed(cfg.mesh.distributed)  # before any other jax call
    # A multi-process job shares one run dir: process 0 holds its lock and writes its files.
    with RunDirLock(run_dir) if sharding.is_primary() else contextlib.nullcontext():
        resolved = OmegaConf.to_container(cfg, resolve=True)
        ckpt = Checkpointer(run_dir / "checkpoints", keep=max(int(cfg.trainer.ckpt_keep), 1),
                            run_config=run_fingerprint(resolved))  # fmt: skip
        try:
            # eval_only never resumes: a dir with a training run's checkpoints is refused
            ckpt.check_resume(bool(cfg.trainer.resume) and not cfg.trainer.eval_only)
            finished = _finished_record(run_dir) if cfg.trainer.resume else None
            if finished is not None:
                console.print(f"{run_dir} holds a finished run (results.json status ok); "
                              "nothing to resume, results kept")  # fmt: skip
                return finished
            return _run_locked(cfg, run_dir, resolved, ckpt)
        finally:
            ckpt.close()


def _finished_record(run_dir: Path) -> dict | None:
    import json

    try:
        rec = json.loads((run_dir / "results.json").read_text())
    except (OSError, ValueError):
        return None
    done = rec.get("status") == "ok" and not (rec.get("run") or {}).get("stopped_at")
    return rec if done else None


def _run_locked(cfg: DictConfig, run_dir: Path, resolved: dict, ckpt: Checkpointer) -> dict:
    t0 = time.time()
    results = record.new_record(cfg.name, run_dir, resolved, record.sweep_key(resolved))
    tracker = None
    try:
        check_config(resolved)
        if PREEMPTION.requested:
            raise Preempted("SIGTERM received before the run started")
        PREEMPTION.install()
        logger = cfg.logger if sharding.is_primary() else {"name": "none"}  # W&B: process 0
        tracker = Tracker(logger, run_dir, cfg.name, results["sweep"], resolved)
        _train_and_eval(cfg, run_dir, results, tracker, ckpt)
        results["status"] = "ok"
    except Preempted as e:
        results["status"] = "preempted"
        results["error"] = str(e)
    except BaseException as e:
        results["status"] = "failed"
        results["error"] = f"{type(e).__name__}: {e}"
        results["traceback"] = traceback.format_exc()
        raise
    finally:
        record.finish(results, t0)
        record.write(results, run_dir)
        if tracker is not None:
            tracker.record(results)
            tracker.finish(exit_code=0 if results["status"] == "ok" else 1)
    return results


def _layer_layout(tcfg: DictConfig, lm) -> tuple[Any, str | None]:
    """The training module (``trainer.remat`` / ``trainer.scan``) and the scan prefix (or None).

    ``trainer.scan``: the frozen base is stacked once and held once: ``lm.params`` becomes the
    stacked tree (each layer's arrays deleted as their stacked leaf is made) and ``lm.module`` a
    :class:`~lora_jax.models.layers.LayerViews` of the per-layer module, so evaluation
    (decoding, validation loss) reads the same stacked arrays. The LoRA tree keeps the
    per-layer layout (checkpoints, export); the step stacks it inside jit."""
    from lora_jax.models.layers import LAYER_PREFIX, LayerViews, stack_layers

    module = lm.module.clone(remat=tcfg.remat, scan_layers=tcfg.scan)
    if not tcfg.scan:
        return module, None
    prefix = LAYER_PREFIX[lm.config.family]
    lm.params = stack_layers(lm.params, prefix, consume=True)
    lm.module = LayerViews(lm.module, prefix)
    return module, prefix


def _train_and_eval(
    cfg: DictConfig, run_dir: Path, results: dict, tracker: Tracker, ckpt: Checkpointer
) -> None:
    tcfg, ocfg = cfg.trainer, cfg.optim
    # 1. The frozen model, in the precision policy's dtypes.
    prec = precision_policy.resolve(cfg.precision, cfg.model.dtype, cfg.model.param_dtype)
    prec.apply()
    results["run"]["precision"] = {
        "compute": prec.compute,
        "base": prec.base,
        "matmul": prec.matmul,
    }
    dev = results["run"]
    console.print(f"{dev['backend']}: {dev['device_count']} x {dev['device_kind']}, "
                  f"{dev['process_count']} process(es); {prec.describe()}; "
                  f"host malloc {dev.get('host_malloc')}")  # fmt: skip
    t = time.time()
    lm = load_model(cfg.model.source, prec.compute, prec.base, cfg.lora.dropout,
                    quant=cfg.model.quant)  # fmt: skip
    frozen, tok = lm.params, lm.tokenizer
    check_model_fit(OmegaConf.to_container(cfg, resolve=True), lm.config)
    console.print(f"[bold]model[/] {cfg.model.name} ({lm.config.model_type}, {lm.config.num_layers} layers) "
                  f"from {cfg.model.source} in {time.time() - t:.1f}s")  # fmt: skip

    # 2. The LoRA tree and the parameter report.
    lora_dict = OmegaConf.to_container(cfg.lora)
    lora_cfg = LoraConfig.from_dict(lora_dict | {"seed": cfg.seed})
    lora, targets = lora_init(
        jax.random.PRNGKey(cfg.seed), frozen, lora_cfg, lora_modules(lm.config)
    )
    ckpt.adapter = adapter_meta(lm.config, lora_dict, targets)
    report = param_report(targets, frozen)
    results["params"] = report.as_dict()
    record.set_targets(results, targets)  # the label, α and scale of what is really adapted
    tracker.update_axes(results["sweep"])
    console.print(
        f"LoRA on {len(targets)} blocks ({results['lora']['label']}): {_describe(targets)}"
    )
    console.print(str(report))
    train_module, prefix = _layer_layout(tcfg, lm)  # trainer.scan: lm.params stacked, once
    frozen = lm.params

    # 3. The task: train examples → token ids → fixed-shape batches; eval items.
    task = _build_task(cfg.task, run_dir)
    results["main_metric"] = task.main_metric
    items = task.eval_groups(task.load("eval"))
    if cfg.task.max_eval_items:
        items = items[: cfg.task.max_eval_items]
    last_hyps: list = []  # the latest eval's hypotheses, for the per-item record
    evaluate_now = _evaluator(cfg, lm, tok, task, items, run_dir, last_hyps, prefix)

    if cfg.adapter:
        lora, _ = load_adapter(cfg.adapter, lora, expected=ckpt.adapter)
        console.print(
            f"loaded adapter from {cfg.adapter} (its metadata matches this model and config)"
        )
        results["run"]["adapter"] = str(Path(cfg.adapter).absolute())
    if tcfg.eval_only:
        results["metrics"]["eval"] = evaluate_now(lora, "eval")
        results["items"] = record.write_items(
            run_dir, last_hyps[0], [it.references for it in items]
        )
        _print_metrics(results["metrics"])
        return

    train = task.load("train")
    if cfg.task.max_train_examples:
        train = train[: cfg.task.max_train_examples]
    encoded = [
        encode_example(tok, ex, cfg.task.format, cfg.task.max_len, task, cfg.task.add_bos)
        for ex in train
    ]
    buckets = (default_buckets(cfg.task.max_len) if tcfg.bucket_step is None
               else linear_buckets(cfg.task.max_len, tcfg.bucket_step))  # fmt: skip
    batches = TrainBatches(
        encoded, tcfg.batch_size, data_seed(cfg), buckets, tok.pad_id, sort_window=tcfg.sort_window
    )
    micro_steps = _total_steps(tcfg, batches.steps_per_epoch)
    tx, lr_fn = build_optimizer(
        OmegaConf.to_container(ocfg), lora, max(micro_steps // ocfg.grad_accum, 1)
    )
    opt_state = tx.init(lora)
    val_batches = _validation_batches(cfg, task, tok, batches.buckets)
    eval_loss = make_eval_loss(lm.module)
    val_m = results["metrics"]["validation"]

    def validate(step: int) -> None:
        if not val_batches:
            return
        loss = validation_loss(eval_loss, lora, frozen, val_batches)
        val_m["loss"] = loss
        val_m.setdefault("history", []).append([step, loss])
        tracker.log({"val/loss": loss}, step=step)
        console.print(f"validation loss at step {step}: {loss:.4f}")

    val_m["examples"] = sum(int(b["attention_mask"].any(axis=1).sum()) for b in val_batches)
    console.print(f"{len(train)} train examples, {batches.steps_per_epoch} steps/epoch, {micro_steps} steps, "
                  f"{len(items)} eval items, buckets {batches.buckets}")  # fmt: skip

    mesh = None  # lora_jax/sharding.py; None: one device, plain jit
    if cfg.mesh.data * cfg.mesh.fsdp != 1:
        mesh = sharding.make_mesh(cfg.mesh.data, cfg.mesh.fsdp)
        sharding.check_batch(tcfg.batch_size, mesh)
        results["run"]["mesh"] = dict(mesh.shape)
        console.print(f"mesh {dict(mesh.shape)}, LoRA/optimizer state {cfg.mesh.lora}")

    # 4. Resume (the config was checked against the stored one in run()); the record of the
    # earlier part (losses, eval before, validation) comes back from the checkpoint's meta.
    start = 0
    if tcfg.resume and ckpt.latest_step() is not None:
        if mesh is not None:  # restore straight onto this run's mesh
            rule = cfg.mesh.lora
            lora = sharding.abstract(lora, sharding.state_shardings(lora, mesh, rule))
            opt_state = sharding.abstract(
                opt_state, sharding.state_shardings(opt_state, mesh, rule)
            )
        lora, opt_state, start, meta = ckpt.restore(lora, opt_state)
        _restore_record(results, meta, start)
        console.print(f"resumed from {ckpt.directory} at step {start}")

    if tcfg.eval_before and start == 0:
        results["metrics"]["eval_before"] = evaluate_now(lora, "eval_before")
        validate(0)

    # 5. The loop: one jitted step; device metrics are fetched only at log points.
    end = micro_steps if tcfg.stop_after is None else min(micro_steps, start + tcfg.stop_after)
    step_fn = make_train_step(
        train_module, tx, label_smoothing=ocfg.label_smoothing, dropout=cfg.lora.dropout > 0,
        loss_chunk=tcfg.loss_chunk, scan_prefix=prefix, jit=mesh is None,
    )  # fmt: skip
    batch_place: Any = jax.devices()[0] if mesh is None else sharding.batch_sharding(mesh)
    if mesh is not None:  # lora_jax/sharding.py: jit with in/out shardings, place the state
        step_fn, sh = sharding.shard_train_step(
            step_fn, mesh, lora, opt_state, frozen, cfg.mesh.lora
        )
        lora, opt_state = (
            sharding.place(lora, sh["lora"]),
            sharding.place(opt_state, sh["opt_state"]),
        )
        # one sharded base for the step and for evaluation (the unsharded one is dropped)
        frozen = lm.params = sharding.place(frozen, sh["frozen"])
    host_batches = (
        (int(b["attention_mask"].sum()), b) for b in map(batches.batch_at, range(start, end))
    )
    device_batches = sharding.prefetch_to_device(host_batches, batch_place, cfg.mesh.prefetch)
    key = jax.random.PRNGKey(cfg.seed)
    train_m = results["metrics"]["train"]
    pending: list[dict] = []
    window_tokens, window_t0, tps_all = 0, None, []
    # non-padding tokens of the batches trained on (those before a resume point included)
    tokens_seen = sum(int(batches.lengths[batches.indices_at(s)].sum()) for s in range(start))
    progress = _progress(tcfg.progress, end - start)
    done = start

    def save(at: int) -> None:
        if at != ckpt.latest_step():  # a resume that ran no step already has it
            ckpt.save(at, lora, opt_state, extra={"train": train_m, "validation": val_m,
                      "eval_before": results["metrics"]["eval_before"]})  # fmt: skip

    for step, (n_tokens, batch) in zip(range(start, end), device_batches):
        window_tokens, tokens_seen = window_tokens + n_tokens, tokens_seen + n_tokens
        lora, opt_state, m = step_fn(lora, opt_state, frozen, batch, jax.random.fold_in(key, step))
        pending.append(m)
        done = step + 1
        if window_t0 is None:  # exclude the compile from throughput
            jax.block_until_ready(m["loss"])
            window_t0, window_tokens = time.perf_counter(), 0
        if done % tcfg.log_every == 0 or done == end:
            host = jax.device_get(pending)
            pending = []
            loss = float(np.mean([h["loss"] for h in host]))
            if not math.isfinite(loss):
                last_good = ckpt.latest_step()
                where = (f"The last good checkpoint is step {last_good} in {ckpt.directory} (resume "
                         "with trainer.resume=true after" if last_good is not None else
                         "No checkpoint was written yet (start again after")  # fmt: skip
                raise NonFiniteLoss(
                    f"loss became {loss} by step {done}; stopped. {where} lowering optim.lr or "
                    "setting optim.grad_clip)"
                )
            dt = time.perf_counter() - window_t0
            tps = window_tokens / dt if dt > 0 and window_tokens else float("nan")
            if math.isfinite(tps):
                tps_all.append(tps)
            window_t0, window_tokens = time.perf_counter(), 0
            train_m.setdefault("first_loss", float(host[0]["loss"]) if start == 0 else None)
            train_m["final_loss"] = loss
            row = {"train/loss": loss, "train/nll": float(np.mean([h["nll"] for h in host])),
                   "train/grad_norm": float(host[-1]["grad_norm"]), "train/lr": float(lr_fn(done // ocfg.grad_accum)),
                   "train/tokens_per_s": tps}  # fmt: skip
            train_m.setdefault("losses", []).append([done, loss])
            tracker.log(row, step=done)
            progress(done - start, f"loss {loss:.4f}  lr {row['train/lr']:.2e}  {tps:,.0f} tok/s")
        broken = False
        if tcfg.ckpt_every and done % tcfg.ckpt_every == 0 and done != end:
            # never checkpoint (or evaluate) a broken state; the next log point stops the run
            broken = not (math.isfinite(float(m["loss"])) and _all_finite(lora))
            if not broken:
                save(done)
        if tcfg.eval_every and done % tcfg.eval_every == 0 and done != end and not broken:
            _log_eval(tracker, evaluate_now(lora, f"eval_step{done}"), done)
            validate(done)
        if PREEMPTION.should_stop(done):  # SIGTERM: a flag read (one process), no host sync
            break
    progress(None, "")
    train_m.update(steps=done, tokens_seen=tokens_seen,
                   tokens_per_s=float(np.median(tps_all)) if tps_all else None)  # fmt: skip
    results["sweep"].update(steps=done, tokens_seen=tokens_seen)
    save(done)
    if PREEMPTION.requested and done < end:
        results["run"]["stopped_at"] = done
        raise Preempted(
            f"SIGTERM: stopped and checkpointed at step {done} of {micro_steps}; resume with "
            "trainer.resume=true"
        )
    if done < micro_steps:
        console.print(
            f"stopped after step {done} of {micro_steps} (trainer.stop_after); resume with trainer.resume=true"
        )
        results["run"]["stopped_at"] = done
        return

    # 6. Evaluate the trained adapter.
    validate(done)
    results["metrics"]["eval"] = evaluate_now(lora, "eval")
    results["items"] = record.write_items(run_dir, last_hyps[0], [it.references for it in items])
    _log_eval(tracker, results["metrics"]["eval"], done)
    results["memory"] = _memory()
    _print_metrics(results["metrics"])


def _restore_record(results: dict, meta: dict, step: int) -> None:
    """The training record of a resumed run's earlier part, as its checkpoint stored it."""
    for key, history in (("train", "losses"), ("validation", "history")):
        part = dict(meta.get(key) or {})
        if part:
            part[history] = [row for row in part.get(history, []) if row[0] <= step]
            results["metrics"][key].update(part)
    if meta.get("eval_before"):
        results["metrics"]["eval_before"] = meta["eval_before"]
    results["run"]["resumed_at"] = step


def data_seed(cfg: DictConfig) -> int:
    """The seed of the batch order: ``trainer.data_seed``, or ``seed`` when it is null."""
    ds = cfg.trainer.get("data_seed")
    return int(cfg.seed if ds is None else ds)


def _log_eval(tracker: Tracker, metrics: dict, step: int) -> None:
    tracker.log(
        {f"eval/{k}": v for k, v in metrics.items() if isinstance(v, (int, float))}, step=step
    )


def _all_finite(tree: Any) -> bool:
    """Whether every leaf of ``tree`` is finite (an update can overflow while the loss that
    produced it was finite)."""
    return all(bool(jnp.isfinite(x).all()) for x in jax.tree.leaves(tree))


def _validation_batches(cfg: DictConfig, task, tok, buckets) -> list[dict]:
    """The held-out batches of lora_jax/validation.py (empty when trainer.val_examples=0)."""
    n = cfg.trainer.val_examples
    if not n:
        return []
    held_out = task.load("eval")[:n]
    if not held_out:
        return []
    encoded = [
        encode_example(tok, ex, cfg.task.format, cfg.task.max_len, task, cfg.task.add_bos)
        for ex in held_out
    ]
    return validation_batches(encoded, cfg.trainer.batch_size, buckets, tok.pad_id)


def _evaluator(cfg, lm, tok, task, items, run_dir, last_hyps: list, prefix: str | None):
    """``evaluate_now(lora, tag)``: decode + score on ``lm``'s module and params at call time
    (with ``prefix``, a scan run's stacked base: the LoRA tree is stacked to match, so merged
    decoding merges layer-stacked kernels)."""
    from lora_jax.models.layers import stack_layers

    def evaluate_now(lora, tag: str) -> dict:
        t = time.time()
        lora = lora if prefix is None else stack_layers(lora, prefix)
        variables = {"params": lm.params, "lora": lora}
        metrics, hyps = evaluate(lm.module, variables, lm.config, tok, task, items, cfg.task.format,
                                 cfg.task.decode, cfg.task.max_len, cfg.task.add_bos)  # fmt: skip
        last_hyps[:] = [hyps]
        if sharding.is_primary():
            (run_dir / f"predictions_{tag}.txt").write_text(
                "".join(h.replace("\n", " ") + "\n" for h in hyps)
            )
        console.print(f"{tag}: decoded {len(items)} items in {time.time() - t:.1f}s: "
                      + ", ".join(f"{k}={v:.4f}" for k, v in metrics.items() if isinstance(v, float)))  # fmt: skip
        return metrics

    return evaluate_now


def _build_task(tc: DictConfig, run_dir: Path):
    kw: dict[str, Any] = {}
    for k in (
        "dataset",
        "data_dir",
        "data_files",
        "train_file",
        "eval_file",
        "train_split",
        "eval_split",
    ):
        v = tc.get(k)
        if v is not None and not (k == "data_files" and len(v) == 0):  # {}: not given
            kw[k] = OmegaConf.to_container(v) if OmegaConf.is_config(v) else v
    if tc.sample:
        if tc.name != "e2e":
            raise ValueError(
                f"task.sample=true writes an E2E-format sample; it does not apply to task {tc.name!r}"
            )
        train_csv, test_csv = write_e2e_sample(run_dir / "data")
        kw = {"data_files": {"train": str(train_csv), "eval": str(test_csv)}}
    if kw.get("data_dir") is not None and not Path(kw["data_dir"]).is_dir():
        raise FileNotFoundError(
            f"task.data_dir={kw['data_dir']!r} is not a directory; point it at the folder with the task's files"
        )
    return get_task(tc.name, **kw, **OmegaConf.to_container(tc.options))


def _total_steps(tcfg: DictConfig, steps_per_epoch: int) -> int:
    if tcfg.max_steps:
        return int(tcfg.max_steps)
    if tcfg.epochs:
        return max(int(math.ceil(tcfg.epochs * steps_per_epoch)), 1)
    raise ValueError("set trainer.max_steps or trainer.epochs")


def _describe(targets) -> str:
    layers = sorted({t.layer for t in targets})
    names = sorted({t.name for t in targets}, key=["q", "k", "v", "o", "gate", "up", "down"].index)
    scales = sorted({(t.r, t.alpha, round(t.scale, 6)) for t in targets})
    sc = "; ".join(f"r={r} alpha={a:g} scale={s:g}" for r, a, s in scales)
    span = (
        f"{layers[0]}-{layers[-1]}"
        if layers == list(range(layers[0], layers[-1] + 1))
        else str(layers)
    )
    return f"layers {span} x {{{', '.join(names)}}}, {sc}"


def _progress(enabled: bool, total: int):
    if not enabled or total <= 0:
        return lambda *_: None
    from tqdm import tqdm

    bar = tqdm(total=total, dynamic_ncols=True, file=sys.stdout)

    def update(n, text):
        if n is None:
            bar.close()
            return
        bar.n = n
        bar.set_postfix_str(text)
        bar.refresh()

    return update


def _print_metrics(metrics: dict) -> None:
    from rich.table import Table

    before, after = metrics.get("eval_before") or {}, metrics.get("eval") or {}
    table = Table(title="task metrics")
    table.add_column("metric")
    if before:
        table.add_column("before", justify="right")
    table.add_column("after", justify="right")
    for k in after:
        v = after[k]
        cells = (
            [f"{before.get(k):.4f}" if isinstance(before.get(k), float) else str(before.get(k, ""))]
            if before
            else []
        )
        table.add_row(k, *cells, f"{v:.4f}" if isinstance(v, float) else str(v))
    console.print(table)
    tr = metrics.get("train") or {}
    if tr.get("first_loss") is not None:
        console.print(
            f"train loss {tr['first_loss']:.4f} -> {tr['final_loss']:.4f} over {tr.get('steps')} steps"
        )


def _memory() -> dict:
    stats = jax.local_devices()[0].memory_stats() or {}
    return {
        "peak_bytes": stats.get("peak_bytes_in_use"),
        "host_peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    }


@hydra.main(config_path=CONF_DIR, config_name="config", version_base="1.3")
def _hydra_main(cfg: DictConfig) -> float | None:
    _quiet_libraries()  # again: Hydra re-configures logging when the job starts
    hc = HydraConfig.get()
    run_dir = Path(cfg.output_dir or hc.runtime.output_dir)
    try:
        res = run(cfg, run_dir)
    except Exception as e:
        if hc.mode == RunMode.MULTIRUN:  # one failing run must not stop the sweep
            console.print(
                f"[red]run {cfg.name} failed[/]: {type(e).__name__}: {e} (see {run_dir}/results.json)"
            )
            SweepStatus.job_errors.append((str(run_dir), "failed", f"{type(e).__name__}: {e}"))
            return None
        if isinstance(e, USER_ERRORS):  # a user's mistake: the message, not a traceback
            where = run_dir / "results.json"
            console.print(f"[red]error[/]: {e}", soft_wrap=True)
            if where.is_file() and '"traceback"' in where.read_text():
                console.print(f"(full traceback in {where})", soft_wrap=True)
            raise SystemExit(1) from None
        raise
    if res["status"] == "preempted":
        console.print(f"[yellow]{res['error']}[/]")
        SweepStatus.job_errors.append((str(run_dir), "preempted", res["error"]))
    main = res["metrics"]["eval"].get(res["main_metric"]) if res["main_metric"] else None
    return main if isinstance(main, float) else None


def main() -> None:
    config_schema.register()
    _quiet_libraries()
    _hydra_main()
    # After every job ran: a multirun with a failed job, or a preempted run, exits non-zero.
    bad = {d: (s, e) for d, s, e in SweepStatus.job_errors + SweepStatus.failed}
    if bad:
        for d, (s, e) in sorted(bad.items()):
            console.print(f"[red]{s}[/]: {d}: {e.splitlines()[0] if e else ''}")
        preempted = all(s == "preempted" for s, _ in bad.values())
        console.print(f"{len(bad)} run(s) did not finish ok (see their results.json)")
        sys.exit(143 if preempted else 1)  # 143 = 128 + SIGTERM, what schedulers expect


def _quiet_libraries() -> None:
    """orbax logs every checkpoint step through absl at INFO; keep the console for our lines."""
    import logging
    import warnings

    for name in ("absl", "jax._src.xla_bridge", "orbax"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message="Some donated buffers were not usable")


if __name__ == "__main__":
    main()
