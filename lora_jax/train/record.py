"""The run record: one schema for ``results.json``, written by training and read by the report,
the W&B logger and the analysis tools (``load`` / ``sweep_key`` / ``recipe`` here, never ad-hoc
key lookups elsewhere).

    {
      "schema": 2,
      "status": "running" | "ok" | "failed",  "error": str | None,  "traceback": str | None,
      "run": {name, dir, started, finished, wall_time_s, command, git_commit, host, platform,
              backend, device_kind, device_count, local_device_count, process_count,
              process_index, precision: {compute, base, matmul}, mesh (when sharded), host_malloc,
              lora_jax_version, packages: {dist name: version | None}},
      "config": the resolved Hydra config (every value the run used),
      "sweep": {sweep, model, task, targets, r, alpha, scale, scaling, lr, steps, tokens_seen,
                seed}                            the key a report groups by
      "lora": {label, layers, modules: {q: {r, alpha, scale, blocks}, ...}}   the resolved targets
      "params": {trainable, base, percent, per_module, frozen_bytes, frozen_bits_per_weight,
                 quantized_weights, quantized_bits_per_weight}   (lora_jax.quant: QLoRA bases)
      "metrics": {eval, eval_before, train: {first_loss, final_loss, losses, steps, tokens_seen,
                  tokens_per_s}, validation: {loss, history: [[step, loss], ...], examples}},
      "main_metric": str | None,
      "memory": {peak_bytes, host_peak_rss_bytes},
      "items": file name of the per-item predictions + references (paired bootstrap) | None
    }

``sweep.targets`` is the label of the modules actually adapted (lora_jax.lora.naming); ``alpha`` and
``scale`` are the values in use (one number when every module shares it, else a list).
"""

from __future__ import annotations

import json
import platform
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import lora_jax
from lora_jax.train.env_info import package_versions

SCHEMA = 2
RESULTS = "results.json"
ITEMS = "items_eval.jsonl"  # one {"hyp", "refs", "scores"} per eval item, in item order (scores: task.item_scores)
# Config keys that do not change what a run computes: ignored when the report checks that the
# runs of one cell differ only in their seed.
NON_RECIPE_KEYS = ("seed", "name", "output_dir", "sweep_name", "adapter", "logger.",
                   "trainer.progress", "trainer.log_every", "trainer.ckpt_every",
                   "trainer.ckpt_keep", "trainer.resume", "trainer.stop_after",
                   "trainer.eval_before", "trainer.eval_every",
                   "task.decode.batch_size", "task.data_dir", "task.data_files",
                   "model.source")  # fmt: skip


def run_info(name: str, run_dir: Path) -> dict[str, Any]:
    """The "run" block at start: versions, device, command line, git commit."""
    import jax

    from lora_jax.train.sharding import device_summary

    return {
        "name": name,
        "dir": str(run_dir),
        "started": now(),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "git_commit": _git_commit(),
        "host": platform.node(),
        "platform": jax.default_backend(),
        **device_summary(),  # backend, device_kind, device/process counts (lora_jax/sharding.py)
        "lora_jax_version": lora_jax.__version__,
        # the host malloc policy for XLA:CPU's temp buffers (lora_jax.run.malloc): set by
        # the entry point that started the run (lora_jax.run.jobs)
        "host_malloc": None,
        # the environment: every distribution of lora-jax's dependency closure (make setup
        # installs them from requirements.lock)
        "packages": package_versions(),
    }


def new_record(name: str, run_dir: Path, config: dict[str, Any], sweep: dict[str, Any]) -> dict:
    """A record with status "running" (written even if the run fails before training)."""
    return {
        "schema": SCHEMA,
        "status": "running",
        "error": None,
        "traceback": None,
        "run": run_info(name, run_dir),
        "config": config,
        "sweep": sweep,
        "lora": {},
        "params": {},
        "metrics": {"eval": {}, "eval_before": {}, "train": {}, "validation": {}},
        "main_metric": None,
        "memory": {"peak_bytes": None},
        "items": None,
    }


def sweep_key(config: Mapping[str, Any], label: str | None = None) -> dict[str, Any]:
    """The "sweep" block from the resolved config, before targeting: ``targets`` is the
    compose-time label until ``set_targets`` replaces it with the resolved one."""
    from lora_jax.lora.naming import label_of_targets

    lora, optim = config["lora"], config["optim"]
    alpha = float(lora["alpha"])
    r = int(lora["r"])
    scale = alpha / r**0.5 if lora["scaling"] == "rslora" else alpha / r
    return {
        "sweep": config.get("sweep_name", "none"),
        "model": config["model"]["name"],
        "task": config["task"]["name"],
        "targets": label or label_of_targets(lora["targets"]),
        "r": r,
        "alpha": alpha,
        "scale": scale,
        "scaling": lora["scaling"],
        "variant": variant_label(config),
        "lr": float(optim["lr"]),
        "steps": None,
        "tokens_seen": None,
        "seed": int(config["seed"]),
    }


def variant_label(config: Mapping[str, Any]) -> str:
    """ "lora", or the variant's parts joined by "+": "dora", the data-driven init ("pissa",
    "pissa_niter_4", "olora"), "lora+16" (optim.loraplus_lr_ratio); a report axis."""
    lora, optim = config["lora"], config["optim"]
    parts = ["dora"] if lora.get("variant", "lora") == "dora" else []
    if lora.get("init") not in (None, "kaiming", "gaussian"):
        parts.append(str(lora["init"]))
    if optim.get("loraplus_lr_ratio"):
        parts.append(f"lora+{float(optim['loraplus_lr_ratio']):g}")
    return "+".join(parts) or "lora"


def set_targets(record: dict, targets: Sequence[Any]) -> None:
    """Record the resolved targets (lora_jax.lora.Target list): the label, and r, α and the scale
    actually used per module; the sweep key's alpha/scale become those values."""
    from lora_jax.lora.naming import label_of_resolved

    modules: dict[str, dict[str, Any]] = {}
    for t in targets:
        m = modules.setdefault(t.name, {"r": set(), "alpha": set(), "scale": set(), "blocks": 0})
        m["r"].add(int(t.r))
        m["alpha"].add(float(t.alpha))
        m["scale"].add(float(t.scale))
        m["blocks"] += 1
    for m in modules.values():
        for k in ("r", "alpha", "scale"):
            m[k] = _one_or_list(m[k])
    record["lora"] = {
        "label": label_of_resolved(targets),
        "layers": sorted({int(t.layer) for t in targets}),
        "modules": modules,
    }
    key = record["sweep"]
    key["targets"] = record["lora"]["label"]
    key["alpha"] = _one_or_list({float(t.alpha) for t in targets})
    key["scale"] = _one_or_list({float(t.scale) for t in targets})


def _one_or_list(values: set) -> Any:
    return next(iter(values)) if len(values) == 1 else sorted(values)


def recipe(record: Mapping[str, Any]) -> dict[str, Any]:
    """Flat {"optim.lr": 2e-4, ...} of the resolved config without NON_RECIPE_KEYS, plus the
    resolved target label: two runs with equal recipes differ only in their seed."""
    flat = {
        k: v
        for k, v in flatten(record.get("config") or {}).items()
        if not any(k == n or (n.endswith(".") and k.startswith(n)) for n in NON_RECIPE_KEYS)
    }
    flat["lora.label"] = (record.get("lora") or {}).get("label") or (record.get("sweep") or {}).get(
        "targets"
    )
    return flat


def flatten(tree: Mapping[str, Any], prefix: str = "", sep: str = ".") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}; lists stay leaves."""
    out: dict[str, Any] = {}
    for k, v in tree.items():
        key = f"{prefix}{sep}{k}" if prefix else str(k)
        if isinstance(v, Mapping) and v:
            out.update(flatten(v, key, sep))
        else:
            out[key] = v
    return out


def finish(record: dict, t0: float) -> None:
    record["run"]["finished"] = now()
    record["run"]["wall_time_s"] = time.time() - t0


def write(record: Mapping[str, Any], run_dir: Path) -> Path:
    """Write ``run_dir/results.json`` (numpy/jax scalars as numbers, anything else as str);
    in a multi-process job only process 0 writes (every process holds the same record)."""
    import numpy as np

    def default(x):
        if isinstance(x, np.generic) or hasattr(x, "__array__"):
            return np.asarray(x).tolist()
        if isinstance(x, set):
            return sorted(x)
        return str(x)

    path = Path(run_dir) / RESULTS
    if _primary():
        path.write_text(json.dumps(record, indent=2, default=default))
    return path


def load(path: str | Path) -> dict[str, Any]:
    """A results.json (or the run dir holding it) -> the record dict."""
    path = Path(path)
    if path.is_dir():
        path = path / RESULTS
    return json.loads(path.read_text())


def write_items(
    run_dir: Path,
    hyps: Sequence[str],
    refs: Sequence[Sequence[str]],
    scores: Sequence[Mapping[str, Any]] | None = None,
) -> str:
    """The per-item hypotheses, references and scores (``task.item_scores``: a number per
    mean-of-items metric, a list of sufficient statistics per corpus metric) of the final eval,
    for the paired bootstrap (lora_jax.report.compare); written by process 0 of a
    multi-process job."""
    if scores is not None and len(scores) != len(hyps):
        raise ValueError(f"{len(scores)} per-item scores for {len(hyps)} hypotheses")
    if not _primary():
        return ITEMS
    with (Path(run_dir) / ITEMS).open("w") as f:
        for i, (h, r) in enumerate(zip(hyps, refs, strict=True)):
            line: dict[str, Any] = {"hyp": h, "refs": list(r)}
            if scores is not None:
                line["scores"] = {k: _plain(v) for k, v in scores[i].items()}
            f.write(json.dumps(line) + "\n")
    return ITEMS


def _plain(value: Any) -> Any:
    """A per-item score as JSON: numbers and lists of numbers (numpy values too)."""
    if hasattr(value, "tolist"):
        return value.tolist()
    return [_plain(v) for v in value] if isinstance(value, (list, tuple)) else value


def read_items(run_dir: Path) -> list[dict[str, Any]]:
    """The items file of a run dir: one {"hyp", "refs"[, "scores"]} per eval item, in order
    (``scores`` since per-item scores were added; earlier files hold hyp and refs only)."""
    path = Path(run_dir) / ITEMS
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _primary() -> bool:
    import jax

    return jax.process_index() == 0


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent,
                             capture_output=True, text=True, timeout=5)  # fmt: skip
        return out.stdout.strip() or None
    except OSError:
        return None
