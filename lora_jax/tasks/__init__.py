"""Tasks: dataset rows -> Examples -> tokenized, bucketed batches; scoring one hypothesis per item."""

from __future__ import annotations

from typing import Any

from lora_jax.errors import ConfigError
from lora_jax.tasks.base import EvalItem, Example, Task
from lora_jax.tasks.e2e import E2ETask
from lora_jax.tasks.samsum import SAMSumTask
from lora_jax.tasks.wikisql import WikiSQLTask

TASKS = {"e2e": E2ETask, "wikisql": WikiSQLTask, "samsum": SAMSumTask}


def get_task(name: str, **cfg: Any) -> Task:
    """Build a task by name ("e2e" | "wikisql" | "samsum") from its config fields."""
    if name not in TASKS:
        raise ConfigError(f"unknown task {name!r}; choose one of {sorted(TASKS)}")
    cls = TASKS[name]
    fields = set(cls.__dataclass_fields__)
    unknown = sorted(set(cfg) - fields)
    if unknown:
        raise ConfigError(f"task {name!r} has no setting(s) {unknown}; valid: {sorted(fields)}")
    return cls(**cfg)


__all__ = [
    "E2ETask",
    "EvalItem",
    "Example",
    "SAMSumTask",
    "Task",
    "TASKS",
    "WikiSQLTask",
    "get_task",
]
