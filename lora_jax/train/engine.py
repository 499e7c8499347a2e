"""The engine: one loop that trains and evaluates K >= 1 LoRA jobs over one frozen base.

A solo run is K = 1; a pack (``hydra/launcher=packed``) is K jobs that share the base, the
data order and every ``trainer.*`` value (lora_jax.run.packs groups them). Read top to bottom,
:func:`train_and_eval` is the run:

1. the frozen base in the precision policy's dtypes; each job's model-fit check, its LoRA tree
   (same seed → same tree as alone), its optimizer and its parameter report;
2. the task: eval items, training batches, held-out batches;
3. the adapters (lora_jax.train.adapters: K = 1 holds one tree, K > 1 a stack), the mesh;
4. resume from the jobs' own checkpoints (the newest step all of them hold);
5. the loop: one jitted step per batch (prefetched to the devices), device metrics fetched only
   at log points, checkpoints / evaluations at their intervals, SIGTERM → checkpoint and stop;
6. validation loss and the decoded task metrics of each job.

Each job writes only into its own record (``job.results``, results.json's dict), run dir and
checkpoints, exactly as a solo run of it would. A job that fails (a bad LoRA config, a
non-finite loss) is dropped and the others go on; with K = 1 the error propagates as it is.
What is around a run (run dirs, locks, W&B, the record's start and end) is lora_jax.run's.

Why one file: this is the run read top to bottom (the stages above, then the loop); the
state it carries is :class:`lora_jax.train.state.Job`, the adapters behind one interface are
lora_jax.train.adapters, and the console lines lora_jax.train.progress.
"""

from __future__ import annotations

import math
import time
import traceback
from pathlib import Path
from typing import Any

import jax
import numpy as np
from omegaconf import OmegaConf

from lora_jax.console import console
from lora_jax.errors import NonFiniteLoss
from lora_jax.eval.evaluate import decode_items
from lora_jax.eval.multi_decode import decode_items_multi
from lora_jax.lora import LoraConfig, param_report
from lora_jax.lora import init as lora_init
from lora_jax.models import precision as precision_policy
from lora_jax.models.pretrained import load_for_run
from lora_jax.models.registry import lora_modules
from lora_jax.tasks.batching import PackedRowBatches
from lora_jax.train import data, record, sharding
from lora_jax.train.adapters import (
    FullModel,
    OneAdapter,
    StackedAdapters,
    full_memory_estimate,
    host_metrics,
)
from lora_jax.train.checkpoint import adapter_meta, load_adapter
from lora_jax.train.checks import check_model_fit
from lora_jax.train.optimizer import build_optimizer
from lora_jax.train.preemption import PREEMPTION, Preempted
from lora_jax.train.progress import describe_targets, print_metrics, progress_bar
from lora_jax.train.state import Job, common_step, layer_layout, memory, restore_record


class Engine:
    """The state the loop carries: the jobs, the loaded model, the task and its batches, the
    adapters. Its methods are the stages of :func:`train_and_eval`."""

    def __init__(self, jobs: list[Job]) -> None:
        self.jobs = jobs
        self.cfg = jobs[0].cfg
        self.tcfg = self.cfg.trainer
        self.strict = len(jobs) == 1  # one job: its errors propagate as they are

    # ------------------------------------------------------------------ failures
    def fail(self, job: Job, exc: BaseException) -> None:
        """Drop ``job`` (K = 1: raise)."""
        if self.strict:
            raise exc
        job.alive, job.exc = False, exc
        job.results["status"], job.results["error"] = "failed", f"{type(exc).__name__}: {exc}"
        job.results["traceback"] = "".join(traceback.format_exception(exc))
        console.print(f"[red]run {job.cfg.name} failed[/]: {type(exc).__name__}: {exc}")
        if job.on_fail is not None:
            job.on_fail(job)

    def live(self) -> list[Job]:
        return [j for j in self.jobs if j.alive]

    # ------------------------------------------------------------------ 1. model and adapters
    def load(self) -> None:
        cfg = self.cfg
        prec = precision_policy.resolve(cfg.precision, cfg.model.dtype, cfg.model.param_dtype)
        dev = self.jobs[0].results["run"]
        for j in self.jobs:
            j.results["run"]["precision"] = {"compute": prec.compute, "base": prec.base,
                                             "matmul": prec.matmul}  # fmt: skip
        console.print(f"{dev['backend']}: {dev['device_count']} x {dev['device_kind']}, "
                      f"{dev['process_count']} process(es); {prec.describe()}; "
                      f"host malloc {dev.get('host_malloc')}")  # fmt: skip
        t = time.time()
        self.lm = load_for_run(cfg)  # applies the precision policy
        console.print(f"[bold]model[/] {cfg.model.name} ({self.lm.config.model_type}, "
                      f"{self.lm.config.num_layers} layers) from {cfg.model.source} in "
                      f"{time.time() - t:.1f}s" + (f"; {len(self.jobs)} jobs" if not self.strict else ""))  # fmt: skip
        for j in self.jobs:
            try:
                self.init_job(j)
            except Exception as e:
                self.fail(j, e)

    def init_job(self, j: Job) -> None:
        """The job's model fit, LoRA tree (the same as alone for the same seed) and report."""
        lm = self.lm
        check_model_fit(OmegaConf.to_container(j.cfg, resolve=True), lm.config)
        if j.cfg.get("method", "lora") == "full":
            self.init_full(j)
            return
        lora_dict = OmegaConf.to_container(j.cfg.lora)
        lcfg = LoraConfig.from_dict(lora_dict | {"seed": j.cfg.seed})
        j.tree, targets = lora_init(
            jax.random.PRNGKey(j.cfg.seed), lm.params, lcfg, lora_modules(lm.config)
        )
        j.ckpt.adapter = adapter_meta(lm.config, lora_dict, targets)
        report = param_report(targets, lm.params)
        j.results["params"] = report.as_dict()
        record.set_targets(j.results, targets)  # the label, α and scale of what is really adapted
        if j.tracker is not None:
            j.tracker.update_axes(j.results["sweep"])
        who = "" if self.strict else f"{j.cfg.name}: "
        console.print(f"{who}LoRA on {len(targets)} blocks ({j.results['lora']['label']}): "
                      f"{describe_targets(targets)}")  # fmt: skip
        if self.strict:
            console.print(str(report))
        if j.cfg.adapter:
            j.tree, _ = load_adapter(j.cfg.adapter, j.tree, expected=j.ckpt.adapter)
            console.print(f"loaded adapter from {j.cfg.adapter} (its metadata matches this model "
                          "and config)")  # fmt: skip
            j.results["run"]["adapter"] = str(Path(j.cfg.adapter).absolute())

    def init_full(self, j: Job) -> None:
        """``method=full``: every base weight trainable, no LoRA tree."""
        n = sum(int(np.size(x)) for x in jax.tree.leaves(self.lm.params))
        j.results["params"] = {"method": "full", "trainable": n, "total": n, "trainable_pct": 100.0}
        j.results["lora"] = {"label": "full", "layers": [], "modules": {}}
        j.results["sweep"].update(method="full", targets="full", r=None, alpha=None, scale=None)
        j.ckpt.adapter = {"method": "full", "model_type": self.lm.config.model_type}
        if j.tracker is not None:
            j.tracker.update_axes(j.results["sweep"])
        console.print(f"full fine-tuning: every base weight trainable ({n:,} parameters)")
        if j.cfg.adapter:  # eval_only (check_config): the run's trained weights replace the base
            self.lm.params, _ = load_adapter(j.cfg.adapter, self.lm.params, expected=j.ckpt.adapter)
            console.print(f"loaded the fully fine-tuned weights from {j.cfg.adapter}")
            j.results["run"]["adapter"] = str(Path(j.cfg.adapter).absolute())

    def layer_layout(self) -> None:
        """The training module (``trainer.remat`` / ``trainer.scan``) and the scan prefix.

        ``trainer.scan``: the frozen base is stacked once and held once: ``lm.params`` becomes
        the stacked tree (each layer's arrays deleted as their stacked leaf is made) and
        ``lm.module`` a :class:`~lora_jax.models.layers.LayerViews` of the per-layer module, so
        evaluation reads the same stacked arrays. LoRA trees keep the per-layer layout
        (checkpoints, export); the step stacks them inside jit."""
        self.module, self.prefix = layer_layout(self.cfg, self.lm)

    # ------------------------------------------------------------------ 2. the task
    def load_task(self) -> None:
        cfg = self.cfg
        self.task = data.build_task(cfg.task, self.jobs[0].run_dir)
        self.items = data.eval_items(cfg, self.task)
        for j in self.jobs:
            j.results["main_metric"] = self.task.main_metric

    def load_batches(self) -> None:
        cfg, tok = self.cfg, self.lm.tokenizer
        train = data.train_examples(cfg, self.task)
        val, train, val_info = data.split_validation(cfg, self.task, train)
        n_train = len(train)
        rows_of = data.row_multiple(cfg)
        self.batches = data.train_batches(cfg, tok, self.task, train, rows_of)
        self.micro = data.total_steps(self.tcfg, self.batches.steps_per_epoch)
        self.accum = int(cfg.optim.grad_accum)
        self.updates = max(self.micro // self.accum, 1)
        for j in self.live():
            try:
                full = j.cfg.get("method", "lora") == "full"
                j.tx, j.lr_fn = build_optimizer(OmegaConf.to_container(j.cfg.optim),
                                                self.lm.params if full else j.tree, self.updates,
                                                every_leaf=full)  # fmt: skip
            except Exception as e:
                self.fail(j, e)
        self.val_batches = data.validation_batches(cfg, self.task, tok, self.batches.buckets, val,
                                                   rows_of)  # fmt: skip
        n_dec = int(self.tcfg.get("val_decode_items") or 0)  # decoded validation items
        self.val_items = self.task.eval_groups(val)[:n_dec] if n_dec else []
        n_val = len(val) if self.val_batches else 0
        for j in self.jobs:
            j.metrics["validation"]["examples"] = n_val
            j.results["data"] = {"train": {"source": _origin(self.task, "train"), "examples": n_train},
                                 "validation": val_info,
                                 "eval": {"source": _origin(self.task, "eval"), "split": "eval",
                                          "items": len(self.items)}}  # fmt: skip
        packed = isinstance(self.batches, PackedRowBatches)
        if packed and self.batches.step_multiple is not None:
            layout = (f"each step packed in {self.batches.row_multiple} row(s), a multiple of "
                      f"{self.batches.step_multiple} tokens (data.pack=step)")  # fmt: skip
        elif packed:
            layout = f"packed rows of {self.batches.row_len} tokens (data.packing)"
        else:
            layout = f"padded rows, buckets {self.batches.buckets}"
        for j in self.jobs:
            j.results["data"]["packing"] = packed
            if packed:
                j.results["data"]["pack"] = "rows" if self.batches.step_multiple is None else "step"
        console.print(f"{n_train} train examples, {self.batches.steps_per_epoch} steps/epoch, "
                      f"{self.micro} steps, {len(self.items)} eval items, " + layout + (f", {len(self.live())} adapters stacked"
                                                   if not self.strict else ""))  # fmt: skip

    def eval_only(self) -> None:
        """``trainer.eval_only``: evaluate the job's adapter (``adapter=``) or its fresh tree."""
        self.accum, self.updates = 1, 1
        full = self.cfg.get("method", "lora") == "full"
        for j in self.live():
            j.tx, j.lr_fn = build_optimizer(OmegaConf.to_container(j.cfg.optim),
                                            self.lm.params if full else j.tree, 1,
                                            every_leaf=full)  # fmt: skip
        self.mesh, self.val_batches, self.val_items = None, [], []
        kw = dict(dropout=False, label_smoothing=0.0, loss_chunk=None, scan_prefix=self.prefix)
        live = self.live()
        if self.cfg.get("method", "lora") == "full":
            self.adapters = FullModel(live, self.module, self.lm.params, **kw)
            self.slots = live
            self.evaluate("eval", None)
            print_metrics(self.jobs[0].metrics)
            return
        self.adapters = (OneAdapter(live, self.module, **kw) if self.strict else
                      StackedAdapters(live, self.module, grad_accum=1, total_updates=1,
                                      base=self._base(), **kw))  # fmt: skip
        self.slots = live
        self.evaluate("eval", None)
        if self.strict:
            print_metrics(self.jobs[0].metrics)

    # ------------------------------------------------------------------ 3. adapters, mesh
    def _base(self) -> tuple:
        """(frozen params, LoRA module map): what a DoRA pack's stacking may need."""
        return self.lm.params, lora_modules(self.lm.config)

    def build_adapters(self) -> None:
        cfg, tcfg, live = self.cfg, self.tcfg, self.live()
        self.mesh = None  # lora_jax.train.sharding; None: one device, plain jit
        if cfg.mesh.data * cfg.mesh.fsdp != 1:
            self.mesh = sharding.make_mesh(cfg.mesh.data, cfg.mesh.fsdp)
            sharding.check_batch(tcfg.batch_size, self.mesh)
            for j in self.jobs:
                j.results["run"]["mesh"] = dict(self.mesh.shape)
            console.print(f"mesh {dict(self.mesh.shape)}, LoRA/optimizer state {cfg.mesh.lora}")
        kw = dict(dropout=cfg.lora.dropout > 0, label_smoothing=cfg.optim.label_smoothing,
                  loss_chunk=tcfg.get("loss_chunk"), scan_prefix=self.prefix, mesh=self.mesh,
                  mesh_rule=cfg.mesh.lora)  # fmt: skip
        if self.cfg.get("method", "lora") == "full":
            console.print(full_memory_estimate(self.lm.params, self.accum))
            self.adapters: Any = FullModel(live, self.module, self.lm.params, **kw)
        elif len(live) == 1 and self.strict:
            self.adapters = OneAdapter(live, self.module, **kw)
        else:
            self.adapters = StackedAdapters(live, self.module, grad_accum=self.accum,
                                            total_updates=self.updates, base=self._base(),
                                            **kw)  # fmt: skip
        self.slots = live  # slot k of the adapters is job slots[k]
        self.eval_loss = self.adapters.eval_loss_fn(self.lm.module)

    # ------------------------------------------------------------------ 4. resume
    def resume(self) -> int:
        if not self.tcfg.resume:
            return 0
        if isinstance(self.adapters, (OneAdapter, FullModel)):
            if self.slots[0].ckpt.latest_step() is None:
                return 0
            start, metas = self.adapters.restore(None)
        else:
            start = common_step([j.ckpt for j in self.slots])
            if not start:
                return 0
            _, metas = self.adapters.restore(start)
        for j, meta in zip(self.slots, metas):
            restore_record(j.results, meta, start)
        console.print(f"resumed {'' if self.strict else f'{len(self.slots)} jobs '}from their "
                      f"checkpoints at step {start}")  # fmt: skip
        return start

    # ------------------------------------------------------------------ evaluation
    def evaluate(self, tag: str, step: int | None) -> None:
        """Decode the eval items with every live adapter and score them per job."""
        t = time.time()
        hyps = self.decode(self.items)
        for j, h in zip(self.slots, hyps):
            if not j.alive:
                continue
            metrics = self.task.score(h, list(self.items))
            j.metrics[tag] = metrics
            if tag == "eval":
                j.results["items"] = record.write_items(
                    j.run_dir,
                    h,
                    [it.references for it in self.items],
                    self.task.item_scores(h, list(self.items)),
                )
            if sharding.is_primary():
                (j.run_dir / f"predictions_{tag}.txt").write_text(
                    "".join(x.replace("\n", " ") + "\n" for x in h)
                )
            if step is not None:
                j.log({f"eval/{k}": v for k, v in metrics.items() if isinstance(v, (int, float))},
                      step)  # fmt: skip
            if self.strict:
                console.print(f"{tag}: decoded {len(self.items)} items in {time.time() - t:.1f}s: "
                              + ", ".join(f"{k}={v:.4f}" for k, v in metrics.items()
                                          if isinstance(v, float)))  # fmt: skip
        if not self.strict:
            console.print(f"{tag}: decoded {len(self.items)} items x {len(self.slots)} adapters "
                          f"in {time.time() - t:.1f}s")  # fmt: skip

    def decode(self, items: list) -> list[list[str]]:
        """Hypotheses per slot for ``items`` (the task's decoding settings)."""
        lm, tok, tc = self.lm, self.lm.tokenizer, self.cfg.task
        if isinstance(self.adapters, (OneAdapter, FullModel)):
            return self.adapters.decode(lm, lambda v: decode_items(
                lm.module, v, lm.config, tok, self.task, items, tc.format, tc.decode,
                tc.max_len, tc.add_bos))  # fmt: skip
        return self.adapters.decode(lm, lambda frozen, stacked: decode_items_multi(
            lm.module, frozen, stacked, lm.config, tok, self.task, items, tc.format,
            tc.decode, tc.max_len, tc.add_bos))  # fmt: skip

    def validate(self, step: int) -> None:
        """Validation loss, and with ``trainer.val_decode_items`` the task metrics of that many
        decoded validation items (``metrics.validation.<metric>``: what ``report --select-by
        val_<metric>`` reads)."""
        if self.val_items:
            for j, h in zip(self.slots, self.decode(self.val_items)):
                if j.alive:
                    scores = self.task.score(h, list(self.val_items))
                    nums = {k: v for k, v in scores.items() if isinstance(v, (int, float))}
                    j.metrics["validation"].update(nums, decoded_items=len(self.val_items))
                    j.log({f"val/{k}": v for k, v in nums.items()}, step)
        if not self.val_batches:
            return
        losses = self.adapters.val_loss(self.eval_loss, self.lm.params, self.val_batches)
        for j, loss in zip(self.slots, losses):
            if j.alive:
                vm = j.metrics["validation"]
                vm["loss"] = loss
                vm.setdefault("history", []).append([step, loss])
                j.log({"val/loss": loss}, step)
                if self.strict:
                    console.print(f"validation loss at step {step}: {loss:.4f}")

    # ------------------------------------------------------------------ 5. the loop
    def save(self, step: int, ok: list[bool] | None = None) -> None:
        """Each live, finite job's checkpoint of ``step``."""
        ok = self.adapters.finite(deep=True) if ok is None else ok
        for k, j in enumerate(self.slots):
            if j.alive and ok[k]:
                j.save(step, *self.adapters.job_state(k))

    def diverged(self, j: Job, step: int, loss: float) -> None:
        last = j.ckpt.latest_step() if j.ckpt is not None else None
        where = (f"The last good checkpoint is step {last} in {j.ckpt.directory} (resume with "
                 "trainer.resume=true after" if last is not None else
                 "No checkpoint was written yet (start again after")  # fmt: skip
        others = (
            ""
            if self.strict
            else "this job was frozen and dropped from its pack, the others went on. "
        )
        self.fail(j, NonFiniteLoss(f"loss or LoRA parameters became non-finite by step {step} "
                                   f"(loss became {loss}); stopped; {others}{where} lowering "
                                   "optim.lr or setting optim.grad_clip)"))  # fmt: skip

    def train(self, start: int) -> int:
        """Steps ``start`` .. the end (or ``trainer.stop_after`` steps, or SIGTERM); returns
        the number of steps done."""
        tcfg, ad, k_jobs = self.tcfg, self.adapters, len(self.slots)
        end = self.micro if tcfg.stop_after is None else min(self.micro, start + tcfg.stop_after)
        self.end = end
        frozen = self.lm.params = ad.place(self.lm.params)  # one (sharded) base for all uses
        place = jax.devices()[0] if self.mesh is None else sharding.batch_sharding(self.mesh)
        b = self.batches
        host_batches = (
            ((int(x["attention_mask"].sum()), x["input_ids"].size), x)
            for x in map(b.batch_at, range(start, end))
        )
        device_batches = sharding.prefetch_to_device(host_batches, place, self.cfg.mesh.prefetch)
        pending: list[dict] = []
        window_tokens, window_t0, tps_all = 0, None, []
        # non-padding tokens of the batches trained on (those before a resume point included)
        tokens_seen = sum(int(b.lengths[b.indices_at(s)].sum()) for s in range(start))
        positions_seen = sum(b.positions_at(s) for s in range(start))  # real + padding
        bar = progress_bar(tcfg.progress, end - start)
        done = start
        for step, ((n_tokens, n_pos), batch) in zip(range(start, end), device_batches):
            window_tokens, tokens_seen = window_tokens + n_tokens, tokens_seen + n_tokens
            positions_seen += n_pos
            pending.append(ad.step(frozen, batch, step))
            done = step + 1
            if window_t0 is None:  # exclude the compile from throughput
                jax.block_until_ready(pending[-1]["loss"])
                window_t0, window_tokens = time.perf_counter(), 0
            if done % tcfg.log_every == 0 or done == end:
                host, pending = host_metrics(pending, k_jobs), []
                ok = ad.finite()
                dt = time.perf_counter() - window_t0
                tps = window_tokens / dt if dt > 0 and window_tokens else float("nan")
                if math.isfinite(tps):
                    tps_all.append(tps)
                window_t0, window_tokens = time.perf_counter(), 0
                self.log_train(host, ok, start, done, tps, bar)
            broken = False
            if tcfg.ckpt_every and done % tcfg.ckpt_every == 0 and done != end:
                # never checkpoint (or evaluate) a broken state; K = 1: the next log point
                # stops the run, K > 1: the job is dropped now
                ok = ad.finite(deep=True)
                broken = not all(ok)
                for k, j in enumerate(self.slots):
                    if j.alive and not ok[k] and not self.strict:
                        self.diverged(j, done, float("nan"))
                self.save(done, ok)
            if (tcfg.eval_every and done % tcfg.eval_every == 0 and done != end and self.live()
                    and not (broken and self.strict)):  # fmt: skip
                self.evaluate(f"eval_step{done}", done)
                self.validate(done)
            if PREEMPTION.should_stop(done):  # SIGTERM: a flag read (one process), no host sync
                break
        bar(None, "")
        tps = float(np.median(tps_all)) if tps_all else None
        for j in self.slots:
            j.metrics["train"].update(steps=done, tokens_seen=tokens_seen, tokens_per_s=tps,
                                      positions_seen=positions_seen,
                                      real_token_fraction=tokens_seen / max(positions_seen, 1))  # fmt: skip
            j.results["sweep"].update(steps=done, tokens_seen=tokens_seen)
            if not self.strict:
                j.results["run"].setdefault("pack", {})["tokens_per_s"] = (
                    None if tps is None else tps * k_jobs
                )
        self.save(done)
        return done

    def log_train(self, host: list[dict], ok: list[bool], start: int, done: int, tps: float,
                  bar: Any) -> None:  # fmt: skip
        texts = []
        for k, j in enumerate(self.slots):
            if not j.alive:
                continue
            loss = float(np.mean([h["loss"][k] for h in host]))
            if not ok[k] or not math.isfinite(loss):
                self.diverged(j, done, loss)
                continue
            tr = j.metrics["train"]
            tr.setdefault("first_loss", float(host[0]["loss"][k]) if start == 0 else None)
            tr["final_loss"] = loss
            tr.setdefault("losses", []).append([done, loss])
            lr = float(j.lr_fn(done // self.accum))
            row = {"train/loss": loss, "train/nll": float(np.mean([h["nll"][k] for h in host])),
                   "train/grad_norm": float(host[-1]["grad_norm"][k]), "train/lr": lr,
                   "train/tokens_per_s": tps}  # fmt: skip
            j.log(row, done)
            texts.append(f"{loss:.4f}")
        lr0 = float(self.slots[0].lr_fn(done // self.accum))
        text = f"loss {' '.join(texts)}  lr {lr0:.2e}  {tps * len(self.slots):,.0f} tok/s"
        if not bar(done - start, text) and not self.strict:
            console.print(f"  step {done}/{self.end}: {text}")


def _origin(task: Any, split: str) -> str | None:
    return task.origin(split) if hasattr(task, "origin") else None


def train_and_eval(jobs: list[Job]) -> None:
    """Train and evaluate ``jobs`` (K >= 1, one pack: the same base, data and trainer
    settings); each job's record, predictions and checkpoints are its own. Raises
    :class:`Preempted` after checkpointing when SIGTERM stopped the loop."""
    e = Engine(jobs)
    e.load()
    if not e.live():
        return
    e.layer_layout()
    e.load_task()
    if e.tcfg.eval_only:
        e.eval_only()
        return
    e.load_batches()
    if not e.live():
        return
    e.build_adapters()
    start = e.resume()
    if e.tcfg.eval_before and start == 0:
        e.evaluate("eval_before", None)
        e.validate(0)
    done = e.train(start)
    if PREEMPTION.requested and done < e.end:
        for j in e.slots:
            j.results["run"]["stopped_at"] = done
        raise Preempted(f"SIGTERM: stopped and checkpointed at step {done} of {e.micro}; resume "
                        "with trainer.resume=true")  # fmt: skip
    if done < e.micro:
        console.print(f"stopped after step {done} of {e.micro} (trainer.stop_after); resume with "
                      "trainer.resume=true")  # fmt: skip
        for j in e.slots:
            j.results["run"]["stopped_at"] = done
        return
    if not e.live():
        return
    e.validate(done)
    e.evaluate("eval", done)
    mem = memory()
    for j in e.live():
        j.results["memory"] = mem
    if e.strict:
        print_metrics(jobs[0].metrics)
