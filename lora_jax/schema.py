"""Typed schemas for the Hydra config tree (conf/). Registered in Hydra's ConfigStore as
``config_schema`` and merged first by conf/config.yaml, so a mistyped key or a wrong type
fails at composition with Hydra's message naming the key, before any work starts."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, OmegaConf


@dataclass
class ModelCfg:
    name: str = MISSING  # short name used in run names and reports
    source: str = MISSING  # local HF folder, .gguf file, or hub id
    dtype: str = "float32"  # compute dtype
    param_dtype: str = "float32"  # storage dtype of the frozen base (bfloat16 halves its memory)


@dataclass
class DecodeCfg:
    num_beams: int = 1
    length_penalty: float = 1.0
    no_repeat_ngram_size: int = 0
    max_new_tokens: int = 64
    batch_size: int = 16


@dataclass
class TaskCfg:
    name: str = MISSING  # e2e | wikisql | samsum
    dataset: str | None = None  # hub id; used when no local files are given
    data_dir: str | None = None
    data_files: dict[str, str] | None = None  # {"train": path, "eval": path}
    train_file: str | None = None
    eval_file: str | None = None
    train_split: str | None = None
    eval_split: str | None = None
    sample: bool = False  # write and use the embedded synthetic E2E-format sample
    format: str = "plain"  # plain (source→target, the paper's) | chat (the model's chat template)
    add_bos: bool | None = None  # plain format: null = BOS iff the tokenizer adds one; true/false
    max_len: int = 512
    max_train_examples: int | None = None
    max_eval_items: int | None = None  # decode only the first N distinct sources
    options: dict[str, Any] = field(default_factory=dict)  # task-specific keyword arguments
    decode: DecodeCfg = field(default_factory=DecodeCfg)


@dataclass
class LoraCfg:
    preset: str = "custom"  # the name of the lora/ group file, for run names and reports
    r: int = 8
    alpha: float = 8.0  # constant in r: PEFT's lora_alpha default; [P §4.1] fixes alpha
    targets: Any = "qv"  # preset/short name, list (names, PEFT suffixes), or one regex string
    exclude_modules: Any = None  # PEFT's: list of names/suffixes or one regex string
    layers: Any = None  # PEFT's layers_to_transform: int or list of layer indices
    dropout: float = 0.0
    init: str = "gaussian"
    scaling: str = "standard"
    rank_pattern: dict[str, int] = field(default_factory=dict)
    alpha_pattern: dict[str, float] = field(default_factory=dict)


@dataclass
class OptimCfg:
    name: str = "adamw"
    lr: float = 2e-4
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-6
    weight_decay: float = 0.01
    schedule: str = "linear"  # linear | cosine | constant (after warmup)
    warmup_steps: int = 0
    grad_clip: float | None = None  # global-norm clipping; null = none
    grad_accum: int = 1
    label_smoothing: float = 0.0


@dataclass
class TrainerCfg:
    batch_size: int = 8
    epochs: float | None = None
    max_steps: int | None = None  # wins over epochs when both are set
    log_every: int = 10
    eval_every: int | None = None  # steps; null = evaluate at the end only
    eval_before: bool = True  # score the base model (B = 0) before training too
    ckpt_every: int | None = None  # steps; a final checkpoint is always written
    ckpt_keep: int = 2
    resume: bool = False
    progress: bool = True
    stop_after: int | None = None  # stop (as if killed) after this many steps: resume tests
    eval_only: bool = False  # skip training; evaluate the base model or `adapter`


@dataclass
class LoggerCfg:
    name: str = "none"  # none | wandb
    project: str = "lora-jax"
    entity: str | None = None
    mode: str = "offline"  # online | offline | disabled
    group: str | None = None
    tags: list[str] = field(default_factory=list)
    dir: str | None = None  # default: the run directory


@dataclass
class Config:
    model: ModelCfg = field(default_factory=ModelCfg)
    task: TaskCfg = field(default_factory=TaskCfg)
    lora: LoraCfg = field(default_factory=LoraCfg)
    optim: OptimCfg = field(default_factory=OptimCfg)
    trainer: TrainerCfg = field(default_factory=TrainerCfg)
    logger: LoggerCfg = field(default_factory=LoggerCfg)
    seed: int = 0
    name: str = "run"
    output_dir: str | None = None  # default: Hydra's run dir
    sweep_name: str = "none"  # the sweep this run belongs to (W&B group, report)
    adapter: str | None = None  # a run's checkpoints/ dir: load its LoRA tree (eval_only)


def register() -> None:
    ConfigStore.instance().store(name="config_schema", node=Config)


def _if_null(value: Any, default: Any) -> Any:
    """``${if_null:${lora.alpha},${lora.r}}``: the first value unless it is null (``oc.select``
    returns a present null as None); integral floats print as ints (run names: a32, not a32.0)."""
    v = default if value is None else value
    return int(v) if isinstance(v, float) and v.is_integer() else v


# Registered on import, so launcher workers that import the app have it too.
OmegaConf.register_new_resolver("if_null", _if_null, replace=True)
