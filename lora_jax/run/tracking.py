"""Run logging: console lines always, Weights & Biases when ``logger.name=wandb``.

W&B: group = the sweep name (``logger.group`` overrides it); config = the full resolved config
plus the run record's ``sweep`` key; tags = ``logger.tags`` plus one ``axis=value`` per sweep
axis (targets as the resolved label such as ``targets=q,v``, r, alpha, scale, scaling, lr, seed),
updated once targeting has resolved the modules; the summary holds the whole run record
(flattened with "/"), so ``python -m lora_jax.report --wandb`` reads the same schema."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lora_jax.console import console
from lora_jax.errors import ConfigError


class Tracker:
    def __init__(
        self,
        logger_cfg: Mapping[str, Any],
        run_dir: Path,
        name: str,
        axes: Mapping[str, Any],
        config: dict,
        concurrent: bool = False,
    ):
        """``concurrent``: this run is one of several open at once in this process (the jobs of
        a pack, lora_jax.run.jobs); otherwise opening it finishes any earlier run."""
        self.run = None
        if logger_cfg["name"] == "none":
            return
        if logger_cfg["name"] != "wandb":
            raise ConfigError(
                f"logger.name={logger_cfg['name']!r} is unknown; allowed values: none, wandb"
            )
        mode = logger_cfg["mode"]
        if mode not in ("online", "offline", "disabled"):
            raise ConfigError(
                f"logger.mode={mode!r} is unknown; allowed values: online, offline, disabled"
            )
        import wandb

        self._user_tags = list(logger_cfg.get("tags") or [])
        kw = dict(
            project=logger_cfg["project"],
            entity=logger_cfg.get("entity"),
            group=run_group(logger_cfg, axes),
            name=name,
            tags=run_tags(self._user_tags, axes),
            dir=str(logger_cfg.get("dir") or run_dir),
            config=config | {"sweep": dict(axes)},
            reinit="create_new" if concurrent else "finish_previous",
        )
        self.run = _init_wandb(wandb, mode, kw)

    def update_axes(self, axes: Mapping[str, Any]) -> None:
        """After targeting: the resolved label/α/scale replace the compose-time ones."""
        if self.run is not None:
            self.run.config.update({"sweep": dict(axes)}, allow_val_change=True)
            self.run.tags = tuple(run_tags(self._user_tags, axes))

    def record(self, results: Mapping[str, Any]) -> None:
        """The final run record into the W&B summary (the report reads it back)."""
        keys = ("status", "error", "main_metric", "sweep", "lora", "params", "metrics", "memory")
        self.summary(flatten({k: results.get(k) for k in keys if results.get(k) is not None}))

    def log(self, metrics: Mapping[str, Any], step: int) -> None:
        if self.run is not None:
            self.run.log(dict(metrics), step=step)

    def summary(self, values: Mapping[str, Any]) -> None:
        if self.run is not None:
            for k, v in values.items():
                self.run.summary[k] = v

    def finish(self, exit_code: int = 0) -> None:
        if self.run is not None:
            self.run.finish(exit_code=exit_code)
            self.run = None

    @property
    def run_dir(self) -> str | None:
        return None if self.run is None else self.run.dir


# W&B online: how long the server may take to answer before the run goes offline. The run never
# waits on (or fails because of) the logger; LORA_JAX_WANDB_TIMEOUT overrides (seconds).
WANDB_PROBE_TIMEOUT_S = 5.0
WANDB_INIT_TIMEOUT_S = 30.0


def _init_wandb(wandb: Any, mode: str, kw: dict[str, Any]) -> Any:
    """``wandb.init``; online, an unreachable server (probed with a short timeout first) or a
    failed init falls back to offline mode with a warning saying how to sync later."""
    if mode != "online":
        return wandb.init(mode=mode, **kw)
    timeout = float(os.environ.get("LORA_JAX_WANDB_TIMEOUT", WANDB_PROBE_TIMEOUT_S))
    base_url = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai").rstrip("/")
    problem = _unreachable(base_url, timeout)
    if problem is None:
        try:
            return wandb.init(
                mode="online",
                settings=wandb.Settings(init_timeout=max(timeout, WANDB_INIT_TIMEOUT_S)),
                **kw,
            )
        except Exception as e:  # the logger must never cost the run
            problem = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    run = wandb.init(mode="offline", **kw)
    console.print(
        f"[yellow]W&B server {base_url} not usable ({problem}); logging offline instead. "
        f"Sync later with: wandb sync {Path(run.dir).parent}[/]"
    )
    return run


def _unreachable(base_url: str, timeout: float) -> str | None:
    """None when ``base_url`` answers HTTP within ``timeout`` s (any status), else why not."""
    import urllib.error
    import urllib.request

    try:
        urllib.request.urlopen(base_url, timeout=timeout).close()
    except urllib.error.HTTPError:
        return None  # it answered
    except (OSError, ValueError) as e:
        return f"{type(e).__name__}: {getattr(e, 'reason', e)}"
    return None


def run_group(logger_cfg: Mapping[str, Any], axes: Mapping[str, Any]) -> str | None:
    """W&B group: ``logger.group`` if set, else the sweep name (None outside a sweep)."""
    sweep = axes.get("sweep")
    return logger_cfg.get("group") or (sweep if sweep and sweep != "none" else None)


TAG_AXES = ("model", "task", "targets", "r", "alpha", "scale", "scaling", "lr", "seed")


def run_tags(user_tags: list[str], axes: Mapping[str, Any]) -> list[str]:
    """``logger.tags`` + ``axis=value`` per sweep axis (W&B caps a tag at 64 characters)."""
    tags = list(user_tags)
    for k in TAG_AXES:
        if axes.get(k) is not None:
            v = axes[k]
            text = f"{v:g}" if isinstance(v, float) else str(v)
            tags.append(f"{k}={text}"[:64])
    return tags


def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}/{k}" if prefix else str(k)
        if isinstance(v, Mapping):
            out.update(flatten(v, key))
        else:
            out[key] = v
    return out
