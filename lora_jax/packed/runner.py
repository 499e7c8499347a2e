"""One pack: K jobs trained and evaluated together, each recorded as if it had run alone.

``run_pack(cfgs, run_dirs)``: the frozen base is loaded once, the task tokenized and
batched once (one data order: lora_jax.packed.group), each job's LoRA tree initialized exactly
as its solo run (lora_jax.train) does and stacked (lora_jax.packed.stack), then one jitted step
over the stack per batch (lora_jax.packed.step) and one multi-adapter decode per evaluation
(lora_jax.packed.decode). Every job gets its own results.json (the solo record, plus
``run.pack``), predictions, checkpoints and W&B run:

- W&B: each job's run is opened when the pack starts (one process holds K runs) and gets its
  rows at each log / eval point, as the solo run logs them; it is finished when the job ends
  (exit code 1 at the moment a job fails, the others when the pack ends).
- Checkpoints: the pack has none of its own; each job's ``<run_dir>/checkpoints`` gets, at
  every ``trainer.ckpt_every`` and at the end, the job's state exactly as its solo run would
  save it (its own ranks and targets, the solo optimizer's state: lora_jax.packed.state; the
  solo run's config fingerprint and record so far). So ``adapter=<run_dir>`` loads it, and a
  stopped job continues alone: ``python -m lora_jax.train <the job's overrides>
  trainer.resume=true output_dir=<run_dir>``, or in any pack.

Failures: a job whose config fails (e.g. a rank too large) is failed before the pack starts; a
job whose loss or parameters become non-finite is frozen on device and failed at the next log
point (or at a checkpoint point, which then skips it); the other jobs go on. Resume
(``trainer.resume=true``): jobs whose results.json says "ok" are kept as they are; the others
(in whatever pack they land) restart together from the newest step all their own checkpoints
hold (from 0 when one has none; later steps are dropped), with their records of the earlier
part, as a solo resume does. A job's run dir is locked while the pack runs; a dir in use by
another process, holding checkpoints (new run) or written with another config (resume) is
refused and left untouched, by the solo run's rules (lora_jax.runguard, lora_jax.checkpoint).
"""

from __future__ import annotations

import contextlib
import json
import math
import time
import traceback
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from omegaconf import DictConfig, OmegaConf

from lora_jax import precision as precision_policy
from lora_jax import record
from lora_jax import train as solo
from lora_jax.checkpoint import Checkpointer, CheckpointError, adapter_meta, run_fingerprint
from lora_jax.lora import LoraConfig, param_report
from lora_jax.lora import init as lora_init
from lora_jax.models.pretrained import load_model
from lora_jax.models.registry import lora_modules
from lora_jax.optimizer import build_optimizer
from lora_jax.packed.decode import decode_items_multi
from lora_jax.packed.group import pack_key
from lora_jax.packed.stack import stack
from lora_jax.packed.state import job_state, stack_states
from lora_jax.packed.step import init_opt_state, job_hyperparams, make_packed_step
from lora_jax.runguard import RunDirInUse, RunDirLock
from lora_jax.step import make_eval_loss
from lora_jax.tasks.batching import TrainBatches, default_buckets, linear_buckets
from lora_jax.tasks.formatting import encode_example
from lora_jax.tracking import Tracker, console


class _Job:
    def __init__(self, cfg: DictConfig, run_dir: Path, index: int, size: int, names: list[str]):
        self.cfg, self.run_dir = cfg, run_dir
        run_dir.mkdir(parents=True, exist_ok=True)
        self.resolved = OmegaConf.to_container(cfg, resolve=True)
        self.results = record.new_record(
            cfg.name, run_dir, self.resolved, record.sweep_key(self.resolved)
        )
        self.results["run"]["pack"] = {"index": index, "size": size, "jobs": names}
        self.tracker: Tracker | None = None  # the job's W&B run, open while the job trains
        self.ckpt: Checkpointer | None = None  # the job's own <run_dir>/checkpoints
        self.solo_tx: Any = None  # the job's optimizer as its solo run builds it
        self.tree: Any = None
        self.adapter: dict = {}
        self.alive = False
        self.refused = False  # its run dir is another run's (in use, checkpoints): not written

    def fail(self, error: str, tb: str | None = None) -> None:
        self.results["status"], self.results["error"] = "failed", error
        self.results["traceback"] = tb
        self.alive = False
        console.print(f"[red]run {self.cfg.name} failed[/]: {error}")
        if not self.refused:
            record.write(self.results, self.run_dir)  # rewritten with the pack's times at its end
        self.close_tracker()

    def log(self, row: dict, step: int) -> None:
        if self.tracker is not None:
            self.tracker.log(row, step=step)

    def close_tracker(self) -> None:
        """The record into the W&B summary, then the run finishes (exit code 1 unless ok)."""
        tracker, self.tracker = self.tracker, None
        if tracker is None:
            return
        try:
            tracker.update_axes(self.results["sweep"])
            tracker.record(self.results)
        finally:
            tracker.finish(exit_code=0 if self.results["status"] == "ok" else 1)

    def save(self, step: int, stacked: Any, opt_state: Any, k: int) -> None:
        """Slot ``k`` of the pack as this job's own checkpoint of ``step`` (what its solo run
        saves: its (lora, opt_state) and its training record so far)."""
        if self.ckpt is None or self.ckpt.latest_step() == step:
            return
        lora, opt = job_state(stacked, opt_state, k, self.tree, self.solo_tx)
        m = self.results["metrics"]
        self.ckpt.save(step, lora, opt, extra={"train": m["train"], "validation": m["validation"],
                                               "eval_before": m["eval_before"]})  # fmt: skip


def run_pack(cfgs: list[DictConfig], run_dirs: list[Path]) -> list[dict]:
    """Train and evaluate the jobs of one pack; returns their records (also written)."""
    keys = {pack_key(c) for c in cfgs}
    if len(keys) != 1:
        raise ValueError(
            "these jobs cannot share a pack (lora_jax.packed.group.make_packs groups them)"
        )
    t0 = time.time()
    names = [str(c.name) for c in cfgs]
    jobs = [_Job(c, d, i, len(cfgs), names) for i, (c, d) in enumerate(zip(cfgs, run_dirs))]
    with contextlib.ExitStack() as held:
        for j in jobs:  # one process per run dir, as for solo runs (lora_jax.runguard)
            try:
                held.enter_context(RunDirLock(j.run_dir))
            except RunDirInUse as e:  # e.g. a solo resume of this job is running: untouched
                j.refused = True
                j.fail(f"RunDirInUse: {e}")
        done_before = {i for i, j in enumerate(jobs) if not j.refused and _finished_ok(j)}
        todo = [j for i, j in enumerate(jobs) if i not in done_before and not j.refused]
        try:
            if todo:
                _train_and_eval(todo)
        except Exception as e:  # the pack broke as a whole: every job still running fails with it
            for j in todo:
                if j.alive or j.results["status"] == "running":
                    j.fail(f"{type(e).__name__}: {e}", traceback.format_exc())
        finally:
            for j in todo:
                if j.ckpt is not None:
                    j.ckpt.close()
        wall = time.time() - t0
        out = []
        for i, j in enumerate(jobs):
            if i in done_before:
                out.append(json.loads((j.run_dir / "results.json").read_text()))
                continue
            r = j.results
            if r["status"] == "running":
                r["status"] = "ok"
            record.finish(r, time.time() - wall / max(len(todo), 1))  # the pack's wall time, shared
            r["run"]["pack"]["wall_time_s"] = wall
            if not j.refused:
                record.write(r, j.run_dir)
            j.close_tracker()
            out.append(r)
    return out


def load_base(cfg: DictConfig) -> Any:
    """The frozen model as the solo run loads it (lora_jax.train): the precision policy's
    dtypes (and matmul precision) and ``model.quant``."""
    prec = precision_policy.resolve(cfg.precision, cfg.model.dtype, cfg.model.param_dtype)
    prec.apply()
    return load_model(cfg.model.source, prec.compute, prec.base, cfg.lora.dropout,
                      quant=cfg.model.get("quant", "none"))  # fmt: skip


def _finished_ok(job: _Job) -> bool:
    path = job.run_dir / "results.json"
    if not (job.cfg.trainer.resume and path.exists()):
        return False
    rec = json.loads(path.read_text())
    return rec.get("status") == "ok" and not rec["run"].get("stopped_at")  # stop_after: not done


def _train_and_eval(jobs: list[_Job]) -> None:
    cfg0 = jobs[0].cfg
    tcfg = cfg0.trainer
    t = time.time()
    lm = load_base(cfg0)
    console.print(
        f"[bold]pack of {len(jobs)}[/]: model {cfg0.model.name} in {time.time() - t:.1f}s"
    )

    # Each job's tree exactly as its solo run builds it; a bad config fails only that job.
    for j in jobs:
        j.alive = True
        try:
            # the solo run's checkpoint dir and rules: a new run refuses one holding
            # checkpoints, a resume one written with another config (lora_jax.checkpoint)
            j.ckpt = Checkpointer(j.run_dir / "checkpoints", keep=max(int(tcfg.ckpt_keep), 1),
                                  run_config=run_fingerprint(j.resolved))  # fmt: skip
            try:
                j.ckpt.check_resume(bool(j.cfg.trainer.resume))
            except CheckpointError:
                j.refused = True
                raise
            j.tracker = Tracker(j.cfg.logger, j.run_dir, j.cfg.name, j.results["sweep"], j.resolved,
                                concurrent=True)  # fmt: skip
            if j.cfg.adapter or j.cfg.trainer.eval_only:
                raise ValueError(
                    "adapter=/trainer.eval_only runs are not packed; use python -m lora_jax.evaluate --adapters"
                )
            lora_dict = OmegaConf.to_container(j.cfg.lora)
            lcfg = LoraConfig.from_dict(lora_dict | {"seed": j.cfg.seed})
            j.tree, targets = lora_init(
                jax.random.PRNGKey(j.cfg.seed), lm.params, lcfg, lora_modules(lm.config)
            )
            j.adapter = j.ckpt.adapter = adapter_meta(lm.config, lora_dict, targets)
            j.results["params"] = param_report(targets, lm.params).as_dict()
            record.set_targets(j.results, targets)
            j.tracker.update_axes(j.results["sweep"])
            console.print(
                f"  {j.cfg.name}: LoRA on {len(targets)} blocks: {solo._describe(targets)}"
            )
        except Exception as e:
            j.fail(f"{type(e).__name__}: {e}", traceback.format_exc())
    live = [j for j in jobs if j.alive]
    if not live:
        return
    # trainer.remat / scan as the solo run applies them (scan: lm.params stacked, once)
    train_module, prefix = solo._layer_layout(tcfg, lm)

    task = solo._build_task(cfg0.task, live[0].run_dir)
    items = task.eval_groups(task.load("eval"))
    if cfg0.task.max_eval_items:
        items = items[: cfg0.task.max_eval_items]
    train = task.load("train")
    if cfg0.task.max_train_examples:
        train = train[: cfg0.task.max_train_examples]
    tok = lm.tokenizer
    add_bos = cfg0.task.add_bos
    encoded = [
        encode_example(tok, ex, cfg0.task.format, cfg0.task.max_len, task, add_bos) for ex in train
    ]
    # the solo run's batches (lora_jax.train)
    buckets = (default_buckets(cfg0.task.max_len) if tcfg.get("bucket_step") is None
               else linear_buckets(cfg0.task.max_len, tcfg.bucket_step))  # fmt: skip
    batches = TrainBatches(encoded, tcfg.batch_size, solo.data_seed(cfg0), buckets, tok.pad_id,
                           sort_window=tcfg.get("sort_window", 0))  # fmt: skip
    micro = solo._total_steps(tcfg, batches.steps_per_epoch)
    accum = int(cfg0.optim.grad_accum)
    total = max(micro // accum, 1)
    lr_fns = []
    for j in list(live):
        j.results["main_metric"] = task.main_metric
        try:
            j.solo_tx, lr_fn = build_optimizer(OmegaConf.to_container(j.cfg.optim), j.tree, total)
            lr_fns.append(lr_fn)
        except Exception as e:
            j.fail(f"{type(e).__name__}: {e}", traceback.format_exc())
            live.remove(j)
    if not live:
        return

    # The stack: K = len(live) slots; a slot's job may fail later (ok[k] = False, frozen).
    k_jobs = len(live)
    stacked, mask = stack([j.tree for j in live])
    hp = job_hyperparams([OmegaConf.to_container(j.cfg.optim) for j in live], lr_fns, total)
    opt_state = init_opt_state(stacked, hp, accum)
    ok = jnp.ones((k_jobs,), bool)
    keys = jnp.stack([jax.random.PRNGKey(int(j.cfg.seed)) for j in live])
    console.print(f"  {len(train)} train examples, {micro} steps, {len(items)} eval items, "
                  f"{k_jobs} adapters stacked")  # fmt: skip

    start = _resume_step(live) if tcfg.resume else 0
    if start:  # the jobs' own checkpoints, restacked (lora_jax.packed.state)
        restored = [j.ckpt.restore(j.tree, j.solo_tx.init(j.tree), step=start) for j in live]
        stacked, _ = stack([r[0] for r in restored])
        opt_state = stack_states(opt_state, [r[1] for r in restored], [j.tree for j in live],
                                 set(stacked))  # fmt: skip
        opt_state = jax.tree.map(jnp.asarray, opt_state)
        for j, r in zip(live, restored):
            solo._restore_record(j.results, r[3], start)
        console.print(f"  resumed the pack's {k_jobs} jobs from their checkpoints at step {start}")

    def evaluate_all(tag: str, step: int | None) -> None:
        t = time.time()
        hyps = decode_items_multi(lm.module, lm.params, stacked, lm.config, tok, task, items,
                                  cfg0.task.format, cfg0.task.decode, cfg0.task.max_len, add_bos)  # fmt: skip
        for j, h in zip(live, hyps):
            if not j.alive:
                continue
            metrics = task.score(h, list(items))
            if tag == "eval":
                j.results["items"] = record.write_items(
                    j.run_dir, h, [it.references for it in items]
                )
            (j.run_dir / f"predictions_{tag}.txt").write_text(
                "".join(x.replace("\n", " ") + "\n" for x in h)
            )
            j.results["metrics"][tag] = metrics
            if step is not None:
                j.log({f"eval/{k}": v for k, v in metrics.items() if isinstance(v, (int, float))},
                      step)  # fmt: skip
        console.print(
            f"  {tag}: decoded {len(items)} items x {k_jobs} adapters in {time.time() - t:.1f}s"
        )

    val_batches = solo._validation_batches(cfg0, task, tok, batches.buckets)
    eval_loss = jax.vmap(make_eval_loss(lm.module), in_axes=(0, None, None))  # [K] sums, tokens

    def validate(step: int) -> None:
        if not val_batches:
            return
        total, n = jnp.zeros((k_jobs,)), jnp.zeros((k_jobs,))
        for b in val_batches:
            s_, n_ = eval_loss(stacked, lm.params, b)
            total, n = total + s_, n + n_
        total, n = jax.device_get((total, n))
        for k, j in enumerate(live):
            if j.alive:
                loss = float(total[k] / max(float(n[k]), 1.0))
                vm = j.results["metrics"]["validation"]
                vm["loss"] = loss
                vm.setdefault("history", []).append([step, loss])
                j.log({"val/loss": loss}, step)

    for j in live:
        j.results["metrics"]["validation"]["examples"] = sum(
            int(b["attention_mask"].any(axis=1).sum()) for b in val_batches
        )
    if tcfg.eval_before and start == 0:
        evaluate_all("eval_before", None)
        validate(0)

    step_fn = make_packed_step(train_module, grad_accum=accum, dropout=cfg0.lora.dropout > 0,
                               loss_chunk=tcfg.get("loss_chunk"), scan_prefix=prefix)  # fmt: skip
    pending: list[dict] = []
    window_tokens, window_t0, tps_all = 0, None, []
    tokens_seen = sum(int(batches.lengths[batches.indices_at(s)].sum()) for s in range(start))
    end = micro if tcfg.stop_after is None else min(micro, start + tcfg.stop_after)
    lr_host = np.asarray(hp["lr"])
    step = start
    for step in range(start, end):
        batch = batches.batch_at(step)
        n_tokens = int(batch["attention_mask"].sum())
        window_tokens, tokens_seen = window_tokens + n_tokens, tokens_seen + n_tokens
        stacked, opt_state, ok, m = step_fn(
            stacked, opt_state, ok, mask, hp, keys, lm.params, batch, step
        )
        pending.append(m)
        done = step + 1
        if window_t0 is None:  # exclude the compile from throughput
            jax.block_until_ready(m["loss"])
            window_t0, window_tokens = time.perf_counter(), 0
        if done % tcfg.log_every == 0 or done == end:
            host, ok_host = jax.device_get((pending, ok))
            pending = []
            dt = time.perf_counter() - window_t0
            tps = window_tokens / dt if dt > 0 and window_tokens else float("nan")
            if math.isfinite(tps):
                tps_all.append(tps)
            window_t0, window_tokens = time.perf_counter(), 0
            for k, j in enumerate(live):
                if not j.alive:
                    continue
                loss = float(np.mean([h["loss"][k] for h in host]))
                if not ok_host[k] or not math.isfinite(loss):
                    j.fail(_diverged(done, f"mean loss of the last {len(host)} steps: {loss}"))
                    continue
                tr = j.results["metrics"]["train"]
                tr.setdefault("first_loss", float(host[0]["loss"][k]) if start == 0 else None)
                tr["final_loss"] = loss
                tr.setdefault("losses", []).append([done, loss])
                row = {"train/loss": loss, "train/nll": float(np.mean([h["nll"][k] for h in host])),
                       "train/grad_norm": float(host[-1]["grad_norm"][k]),
                       "train/lr": float(lr_host[k, min(done // accum, total)]), "train/tokens_per_s": tps}  # fmt: skip
                j.log(row, done)
            console.print(f"  step {done}/{end}: " + " ".join(
                f"{float(np.mean([h['loss'][k] for h in host])):.3f}" for k in range(k_jobs)) + f"  {tps * k_jobs:,.0f} tok/s")  # fmt: skip
        if tcfg.ckpt_every and done % tcfg.ckpt_every == 0 and done != end:
            host_state, ok_host = jax.device_get(((stacked, opt_state), ok))  # one transfer
            for k, j in enumerate(live):
                if j.alive and not ok_host[k]:  # frozen since the last log point: fails now
                    j.fail(_diverged(done, "found at a checkpoint"))
                elif j.alive:
                    j.save(done, *host_state, k)
        if tcfg.eval_every and done % tcfg.eval_every == 0 and done != end:
            evaluate_all(f"eval_step{done}", done)
            validate(done)
    done = step + 1 if end > start else start
    ok_host = [bool(x) for x in jax.device_get(ok)]
    tps = float(np.median(tps_all)) if tps_all else None
    host_state = jax.device_get((stacked, opt_state))
    for k, j in enumerate(live):
        if not (j.alive and ok_host[k]):
            continue
        j.results["metrics"]["train"].update(steps=done, tokens_seen=tokens_seen, tokens_per_s=tps)
        j.results["sweep"].update(steps=done, tokens_seen=tokens_seen)
        j.results["run"]["pack"]["tokens_per_s"] = None if tps is None else tps * k_jobs
        if done < micro:
            j.results["run"]["stopped_at"] = done
        j.save(done, *host_state, k)
    if done < micro:
        console.print(
            f"  stopped after step {done} of {micro} (trainer.stop_after); resume with trainer.resume=true"
        )
        return

    validate(done)
    evaluate_all("eval", done)
    mem = solo._memory()
    for j in live:
        if j.alive:
            j.results["memory"] = mem


def _diverged(step: int, detail: str) -> str:
    return (f"NonFiniteLoss: loss or LoRA parameters became non-finite by step {step} ({detail}); "
            "this job was frozen and dropped from its pack, the others went on. Lower optim.lr or "
            "set optim.grad_clip")  # fmt: skip


def _resume_step(jobs: list[_Job]) -> int:
    """The newest step every job's own checkpoint holds (0: one has none, start afresh); the
    steps after it are dropped (the pack writes them again)."""
    ckpts = [j.ckpt for j in jobs if j.ckpt is not None]
    held = [set(c.all_steps()) for c in ckpts]
    start = max(set.intersection(*held) if held else set(), default=0)
    for c in ckpts:
        for s in c.all_steps():
            if s > start:
                c.manager.delete(s)
    return start
