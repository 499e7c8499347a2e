"""Range checks of the run config, before any work: every value out of its allowed range is
reported at once, each with the range it must be in (the table and the messages are
lora_jax.ranges', which the library's own checks use too). Types and key names are checked
earlier by the structured schema at composition; these are the checks a type cannot express."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from lora_jax.errors import ConfigError
from lora_jax.ranges import CHOICES, RULES, SWITCHES, value_problem


def _get(cfg: Mapping[str, Any], dotted: str) -> tuple[bool, Any]:
    node: Any = cfg
    for k in dotted.split("."):
        if not isinstance(node, Mapping) or k not in node:
            return False, None
        node = node[k]
    return True, node


def config_problems(cfg: Mapping[str, Any]) -> list[str]:
    """``["optim.lr=-1: must be > 0", ...]`` for a resolved config dict (empty: all valid)."""
    out = []
    for key in [k for k, *_ in RULES] + list(CHOICES) + list(SWITCHES):  # lora_jax.ranges
        present, v = _get(cfg, key)
        problem = value_problem(key, v) if present else None
        if problem:
            out.append(problem)
    for key in ("lora.rank_pattern", "lora.alpha_pattern"):  # the messages LoraConfig gives
        present, patterns = _get(cfg, key)
        for pat, v in (patterns or {}).items() if present else ():
            name, number = (
                f"{key}[{pat!r}]={v!r}",
                isinstance(v, (int, float)) and not isinstance(v, bool),
            )
            if key == "lora.rank_pattern" and not (number and v == int(v) and isinstance(v, int)):
                out.append(f"{name}: must be an integer >= 1")
            elif key == "lora.rank_pattern" and v < 1:
                out.append(f"{name}: must be >= 1")
            elif key == "lora.alpha_pattern" and not (number and v > 0):
                out.append(f"{name}: must be > 0")
    if cfg.get("method") == "full":
        if (cfg.get("model") or {}).get("quant", "none") != "none":
            out.append("method=full trains every base weight, so the base cannot be quantized: "
                       "set model.quant=none")  # fmt: skip
        mesh = cfg.get("mesh") or {}
        if mesh.get("data", 1) * mesh.get("fsdp", 1) != 1:
            out.append("method=full runs on one device for now: set mesh=single")
        if cfg.get("adapter") and not (cfg.get("trainer") or {}).get("eval_only"):
            out.append("method=full loads a run's trained weights (adapter=RUN_DIR) only to "
                       "evaluate them: set trainer.eval_only=true (to go on training a run: "
                       "trainer.resume=true in its dir)")  # fmt: skip
    tr = cfg.get("trainer") or {}
    if not tr.get("eval_only") and tr.get("max_steps") is None and tr.get("epochs") is None:
        out.append("trainer.max_steps and trainer.epochs are both null: set one of them")
    return out


def check_config(cfg: Mapping[str, Any]) -> None:
    """Raise ConfigError listing every out-of-range value of a resolved config dict."""
    problems = config_problems(cfg)
    if problems:
        raise ConfigError("invalid config value(s):\n  " + "\n  ".join(problems))


def check_model_fit(cfg: Mapping[str, Any], model_config: Any) -> None:
    """What depends on the loaded model's config: sequences must fit its positions."""
    limit = getattr(model_config, "max_position_embeddings", None)
    max_len = int(cfg["task"]["max_len"])
    if limit is not None and max_len > limit:
        raise ConfigError(
            f"task.max_len={max_len}: must be <= {limit}, the model's position count "
            f"(max_position_embeddings of {cfg['model']['source']}); set task.max_len={limit} "
            "or less"
        )
