"""Run logging: console lines always, Weights & Biases when ``logger.name=wandb``.

W&B group defaults to the sweep name; the run name and tags come from the sweep axes
(model, task, targets, r, alpha, scaling, seed)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from rich.console import Console

console = Console(highlight=False)


class Tracker:
    def __init__(
        self,
        logger_cfg: Mapping[str, Any],
        run_dir: Path,
        name: str,
        axes: Mapping[str, Any],
        config: dict,
    ):
        self.run = None
        if logger_cfg["name"] == "none":
            return
        if logger_cfg["name"] != "wandb":
            raise ValueError(
                f"logger.name={logger_cfg['name']!r} is unknown; allowed values: none, wandb"
            )
        mode = logger_cfg["mode"]
        if mode not in ("online", "offline", "disabled"):
            raise ValueError(
                f"logger.mode={mode!r} is unknown; allowed values: online, offline, disabled"
            )
        import wandb

        tags = list(logger_cfg.get("tags") or []) + [
            f"{k}={v}" for k, v in axes.items() if k != "seed"
        ]
        self.run = wandb.init(
            project=logger_cfg["project"],
            entity=logger_cfg.get("entity"),
            group=logger_cfg.get("group") or axes.get("sweep") or None,
            name=name,
            tags=tags,
            mode=mode,
            dir=str(logger_cfg.get("dir") or run_dir),
            config=config | {"sweep_axes": dict(axes)},
            reinit="finish_previous",
        )

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


def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}/{k}" if prefix else str(k)
        if isinstance(v, Mapping):
            out.update(flatten(v, key))
        else:
            out[key] = v
    return out
