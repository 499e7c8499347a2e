"""Range checks of the run config, before any work: every value out of its allowed range is
reported at once, each with the range it must be in. Types and key names are checked earlier
by the structured schema at composition; these are the checks a type cannot express."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from lora_jax.errors import ConfigError  # noqa: F401  (raised here; the project's type)


def _pos(v: Any) -> bool:
    return v > 0


def _nonneg(v: Any) -> bool:
    return v >= 0


def _ge1(v: Any) -> bool:
    return v >= 1


# (dotted key, may be null, predicate, the allowed range in words)
_RULES: list[tuple[str, bool, Callable[[Any], bool], str]] = [
    ("optim.lr", False, _pos, "> 0"),
    ("optim.warmup_steps", False, _nonneg, ">= 0"),
    ("optim.label_smoothing", False, lambda v: 0 <= v < 1, "in [0, 1)"),
    ("optim.grad_accum", False, _ge1, ">= 1"),
    ("optim.weight_decay", False, _nonneg, ">= 0"),
    ("optim.b1", False, lambda v: 0 <= v < 1, "in [0, 1)"),
    ("optim.b2", False, lambda v: 0 <= v < 1, "in [0, 1)"),
    ("optim.eps", False, _pos, "> 0"),
    ("optim.grad_clip", True, _pos, "> 0, or null for no clipping"),
    ("trainer.batch_size", False, _ge1, ">= 1"),
    ("trainer.epochs", True, _pos, "> 0, or null to use trainer.max_steps"),
    ("trainer.max_steps", True, _ge1, ">= 1, or null to use trainer.epochs"),
    ("trainer.log_every", False, _ge1, ">= 1 (steps)"),
    ("trainer.eval_every", True, _ge1, ">= 1 (steps), or null for the end only"),
    ("trainer.ckpt_every", True, _ge1, ">= 1 (steps), or null for the final checkpoint only"),
    ("trainer.ckpt_keep", False, _ge1, ">= 1 (the final checkpoint is always kept)"),
    ("trainer.stop_after", True, _ge1, ">= 1 (steps), or null"),
    ("task.max_len", False, lambda v: v >= 2, ">= 2 (tokens)"),
    ("task.max_train_examples", True, _ge1, ">= 1, or null for all"),
    ("task.max_eval_items", True, _ge1, ">= 1, or null for all"),
    ("task.decode.num_beams", False, _ge1, ">= 1"),
    ("task.decode.max_new_tokens", False, _ge1, ">= 1"),
    ("task.decode.batch_size", False, _ge1, ">= 1"),
    ("task.decode.no_repeat_ngram_size", False, _nonneg, ">= 0 (0 = off)"),
    ("lora.r", False, _ge1, ">= 1"),
    ("lora.alpha", True, _pos, "> 0, or null for alpha = r"),
    ("lora.dropout", False, lambda v: 0 <= v < 1, "in [0, 1)"),
    ("seed", False, _nonneg, ">= 0"),
    ("method", False, lambda v: v in ("lora", "full"), "lora or full"),
]


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
    for key, nullable, ok, allowed in _RULES:
        present, v = _get(cfg, key)
        if not present:
            continue
        if v is None:
            if not nullable:
                out.append(f"{key}=null: must be {allowed}")
            continue
        if isinstance(v, str) and key == "method":
            if not ok(v):
                out.append(f"{key}={v!r}: must be {allowed}")
            continue
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not ok(v):
            out.append(f"{key}={v!r}: must be {allowed}")
    for key, allowed in (("lora.rank_pattern", ">= 1"), ("lora.alpha_pattern", "> 0")):
        present, patterns = _get(cfg, key)
        for pat, v in (patterns or {}).items() if present else ():
            if not isinstance(v, (int, float)) or v <= 0 or (allowed == ">= 1" and v < 1):
                out.append(f"{key}[{pat!r}]={v!r}: must be {allowed}")
    if cfg.get("method") == "full":
        if (cfg.get("model") or {}).get("quant", "none") != "none":
            out.append("method=full trains every base weight, so the base cannot be quantized: "
                       "set model.quant=none")  # fmt: skip
        mesh = cfg.get("mesh") or {}
        if mesh.get("data", 1) * mesh.get("fsdp", 1) != 1:
            out.append("method=full runs on one device for now: set mesh=single")
        if cfg.get("adapter"):
            out.append("method=full has no adapter to load: drop adapter=")
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
