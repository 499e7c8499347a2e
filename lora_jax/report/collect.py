"""Collect runs for the report: one run record (lora_jax/record.py) per run dir of a Hydra
multirun, or per W&B run (its summary holds the same record, flattened with "/").

A run dir with ``.hydra/overrides.yaml`` but no ``results.json`` is a failed run whose axes are
parsed from its overrides. Target axes are canonical labels (``q,v``): a legacy preset value
(``qv``) or a list of short names is normalized with lora_jax.lora.naming.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lora_jax.train import record

# Override keys (last dotted component) that name a sweep axis under another name.
AXIS_ALIASES = {"rank": "r", "lora_r": "r", "target": "targets", "target_modules": "targets"}
AXIS_ALIASES |= {"lora_alpha": "alpha"}
# Measurements in the sweep key, never grouping axes (they differ between seeds).
MEASURED = ("tokens_seen",)


class ReportError(ValueError):
    """Bad report input (no runs, unknown metric or axis); the message says how to fix it."""


@dataclass
class Run:
    """One training run as the report sees it.

    metrics: flat {"eval.bleu": 0.70, "train.final_loss": 1.2, ...} of raw stored values.
    recipe: flat resolved config minus non-recipe keys (record.recipe); {} when unknown.
    """

    name: str
    ok: bool
    error: str | None
    sweep: dict[str, Any]
    metrics: dict[str, float] = field(default_factory=dict)
    trainable: int | None = None
    main_metric: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    recipe: dict[str, Any] = field(default_factory=dict)


def norm_value(value: Any) -> Any:
    """Canonical axis value: 4.0 -> 4, ["q", "v"] -> "q,v", ["q_proj", "v_proj"] -> "q_proj,v_proj"."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, (list, tuple)):
        return target_label([str(norm_value(v)) for v in value])
    if isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            return value
        return int(number) if number.is_integer() and "." not in value else number
    return value


def _flatten(tree: Any, prefix: str = "") -> dict[str, float]:
    """Numeric leaves of a nested dict as {"a.b": value}; non-numbers and bools are dropped."""
    out: dict[str, float] = {}
    if isinstance(tree, dict):
        for key, value in tree.items():
            out |= _flatten(value, f"{prefix}{key}.")
    elif isinstance(tree, (int, float)) and not isinstance(tree, bool):
        out[prefix[:-1]] = float(tree)
    return out


def target_label(value: Any) -> Any:
    from lora_jax.lora.naming import label_of_targets

    if isinstance(value, str):
        return label_of_targets(value)
    if isinstance(value, (list, tuple)):
        return label_of_targets([str(v) for v in value])
    return value


def _axes(sweep: dict[str, Any]) -> dict[str, Any]:
    out = {k: norm_value(v) for k, v in sweep.items() if k not in MEASURED and v is not None}
    if "targets" in sweep:
        out["targets"] = target_label(sweep["targets"])
    return out


def run_from_results(results: dict[str, Any], fallback_name: str) -> Run:
    """Parse one run record (lora_jax/record.py) into a Run."""
    run_info = results.get("run") or {}
    status = results.get("status")
    sweep = _axes(results.get("sweep") or {})
    trainable = (results.get("params") or {}).get("trainable")
    extra = {
        "wall_time_s": run_info.get("wall_time_s"),
        "peak_bytes": (results.get("memory") or {}).get("peak_bytes"),
        "dir": run_info.get("dir"),
    }
    return Run(
        name=str(run_info.get("name") or fallback_name),
        ok=status == "ok",
        error=None if status == "ok" else str(results.get("error") or f"status {status!r}"),
        sweep=sweep,
        metrics=_flatten(results.get("metrics") or {}),
        trainable=None if trainable is None else int(trainable),
        main_metric=results.get("main_metric"),
        extra=extra,
        recipe=record.recipe(results) if results.get("config") else {},
    )


def parse_overrides(lines: Iterable[str]) -> dict[str, Any]:
    """Hydra overrides ["lora.r=4", "+seed=1", "lora.targets=qv"] -> {"r": 4, "seed": 1, ...}.

    The axis name is the override key's last dotted component (with AXIS_ALIASES applied).
    """
    axes: dict[str, Any] = {}
    for line in lines:
        if "=" not in line:
            continue
        key, value = line.split("=", 1)
        key = key.lstrip("+~").rsplit(".", 1)[-1]
        value = value.strip().strip("'\"")
        if value.startswith("[") and value.endswith("]"):
            value = [v.strip().strip("'\"") for v in value[1:-1].split(",") if v.strip()]
        axes[AXIS_ALIASES.get(key, key)] = norm_value(value)
    if "targets" in axes:
        axes["targets"] = target_label(axes["targets"])
    return axes


def _read_overrides(path: Path) -> list[str]:
    import yaml  # PyYAML ships with hydra-core/omegaconf

    data = yaml.safe_load(path.read_text()) or []
    return [str(x) for x in data]


def load_run_dir(run_dir: Path, root: Path) -> Run:
    """A Hydra run dir -> Run; no results.json means the run died before writing it."""
    rel = str(run_dir.relative_to(root)) if run_dir != root else run_dir.name
    results_path = run_dir / "results.json"
    if results_path.is_file():
        try:
            results = record.load(results_path)
        except json.JSONDecodeError as e:
            return Run(rel, False, f"unreadable results.json: {e}", {})
        run = run_from_results(results, rel)
        run.extra["dir"] = str(run_dir)
        return run
    overrides = run_dir / ".hydra" / "overrides.yaml"
    sweep = parse_overrides(_read_overrides(overrides)) if overrides.is_file() else {}
    error = "no results.json (the run crashed, was killed, or is still running)"
    return Run(rel, False, error, sweep, extra={"dir": str(run_dir)})


def collect_runs(root: str | Path) -> list[Run]:
    """All runs under a multirun dir (or one run dir): dirs holding results.json or .hydra/."""
    root = Path(root)
    if not root.is_dir():
        raise ReportError(
            f"{root} is not a directory; pass a Hydra multirun dir (multirun/DATE/TIME)"
        )
    run_dirs = {p.parent for p in root.rglob("results.json")}
    run_dirs |= {p.parent.parent for p in root.rglob(".hydra/overrides.yaml")}
    if not run_dirs:
        raise ReportError(
            f"no runs under {root}: expected run dirs with results.json or .hydra/overrides.yaml "
            "(point at a multirun dir like multirun/DATE/TIME, or use --wandb ENTITY/PROJECT)"
        )
    # natural order: numeric parts by value, before names ("2" < "10" < "failed_0")
    key = lambda p: [
        (0, int(s), "") if s.isdigit() else (1, 0, s) for s in p.relative_to(root).parts
    ]
    return [load_run_dir(d, root) for d in sorted(run_dirs, key=key)]


def _unflatten(flat: dict[str, Any]) -> dict[str, Any]:
    """{"metrics/eval/bleu": 1} or {"metrics.eval.bleu": 1} -> nested; nested input passes."""
    tree: dict[str, Any] = {}
    for key, value in flat.items():
        if key.startswith("_"):  # W&B internals (_step, _runtime, _wandb)
            continue
        parts = key.replace("/", ".").split(".")
        node = tree
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                break
        else:
            leaf = node.get(parts[-1])
            if isinstance(leaf, dict) and isinstance(value, dict):
                leaf |= value
            else:
                node[parts[-1]] = value
    return tree


def collect_wandb_runs(path: str, group: str | None = None, api: Any = None) -> list[Run]:
    """Runs of a W&B project "entity/project" (optionally one group) -> Runs.

    Summary keys follow the results.json schema; the axes are the summary's "sweep", completed
    from config["sweep"] or, failing that, from config leaves named like an axis (r, targets,
    alpha, seed, ...).
    """
    if api is None:
        import wandb

        api = wandb.Api()
    filters = {"group": group} if group else None
    runs: list[Run] = []
    for wrun in api.runs(path, filters=filters):
        summary = getattr(wrun, "summary_metrics", None)
        if summary is None:
            summary = dict(wrun.summary)
        results = _unflatten(dict(summary))
        config = _unflatten(dict(wrun.config or {}))
        from_config = config.get("sweep") or _axes_from_config(config)
        results["sweep"] = from_config | (results.get("sweep") or {})
        results.setdefault("config", {k: v for k, v in config.items() if k != "sweep"})
        results.setdefault("run", {}).setdefault("name", wrun.name)
        if "status" not in results:
            state = getattr(wrun, "state", "unknown")
            results["status"] = "failed"
            results["error"] = f"no results in the W&B summary (run state: {state})"
        runs.append(run_from_results(results, wrun.name))
    if not runs:
        where = f"group {group!r} of {path}" if group else path
        raise ReportError(f"no W&B runs in {where}: check the entity/project and --group")
    return runs


def _axes_from_config(config: dict[str, Any]) -> dict[str, Any]:
    wanted = {"model", "task", "targets", "r", "alpha", "scaling", "seed"}
    flat = {}
    stack = [config]
    while stack:
        node = stack.pop()
        for key, value in node.items():
            key = AXIS_ALIASES.get(key, key)
            if isinstance(value, dict):
                stack.append(value)
            elif key in wanted and key not in flat:
                flat[key] = norm_value(value)
    return flat
