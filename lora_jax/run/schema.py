"""Typed schemas for the Hydra config tree (conf/). Registered in Hydra's ConfigStore as
``config_schema`` and merged first by conf/config.yaml, so a mistyped key or a wrong type
fails at composition with Hydra's message naming the key, before any work starts."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.experimental.callback import Callback
from omegaconf import MISSING, DictConfig, OmegaConf


def _open_dict() -> Any:
    """An empty dict node that accepts new keys from the command line without a ``+``
    (Hydra puts the whole config in struct mode; these user-keyed dicts opt out)."""
    return OmegaConf.create({}, flags={"struct": False})


@dataclass
class ModelCfg:
    name: str = MISSING  # short name used in run names and reports
    source: str = MISSING  # local HF folder, .gguf file, or hub id
    dtype: str | None = None  # compute dtype; null = from the precision policy (precision=)
    param_dtype: str | None = None  # frozen base storage dtype; null = from precision=
    # QLoRA: store the frozen LoRA-targetable kernels quantized, dequantized on the fly:
    # none | nf4 (QLoRA's NF4 + double quantization) | int8 (row-wise) | keep (a GGUF's blocks)
    quant: str = "none"


@dataclass
class DecodeCfg:
    num_beams: int = 1
    length_penalty: float = 1.0
    no_repeat_ngram_size: int = 0
    max_new_tokens: int = 64
    batch_size: int = 16
    # decode on merged weights W + s·BA (the base model's cost); null = when the base is fp32
    merged: bool | None = None


@dataclass
class TaskCfg:
    name: str = MISSING  # e2e | wikisql | samsum
    dataset: str | None = None  # hub id; used when no local files are given
    # hub revision: a branch, tag or commit; "refs/convert/parquet" is the hub's parquet
    # conversion of a dataset that only ships a loading script (datasets >= 4 runs none)
    revision: str | None = None
    data_dir: str | None = None
    # {"train": path, "eval": path}; empty: data_dir or dataset. Settable key by key on the
    # command line (task.data_files.train=a.jsonl task.data_files.eval=b.jsonl)
    data_files: dict[str, str] = field(default_factory=lambda: _open_dict())
    train_file: str | None = None
    eval_file: str | None = None
    train_split: str | None = None
    eval_split: str | None = None
    validation_file: str | None = None  # null: the task's default (E2E devset.csv, ...)
    validation_split: str | None = None  # hub split for validation (null: the task's default)
    sample: bool = False  # write and use the embedded synthetic E2E-format sample
    format: str = "plain"  # plain (source→target, the paper's) | chat (the model's chat template)
    add_bos: bool | None = None  # plain format: null = BOS iff the tokenizer adds one; true/false
    max_len: int = 512
    max_train_examples: int | None = None
    max_eval_items: int | None = None  # decode only the first N distinct sources
    options: dict[str, Any] = field(default_factory=lambda: _open_dict())  # task kwargs
    decode: DecodeCfg = field(default_factory=DecodeCfg)


@dataclass
class LoraCfg:
    r: int = 8
    # A constant, never tied to r: the paper keeps α fixed as r changes [P §4.1]; 8 is PEFT's
    # LoraConfig default lora_alpha (huggingface/peft src/peft/tuners/lora/config.py).
    alpha: float = 8.0
    targets: Any = "qv"  # preset/short name, list (names, PEFT suffixes), or one regex string
    exclude_modules: Any = None  # PEFT's: list of names/suffixes or one regex string
    layers: Any = None  # PEFT's layers_to_transform: int or list of layer indices
    dropout: float = 0.0
    init: str = "kaiming"  # PEFT's init_lora_weights=True: A ~ U(±1/√in), B = 0 (gaussian: A ~ N(0, 1/r²))  # also "pissa", "pissa_niter_<K>", "olora" (PEFT's data-dependent inits)
    variant: str = "lora"  # "dora": PEFT's use_dora=True (a trainable magnitude per column)
    scaling: str = "standard"
    # regex → value; new keys need no `+`: 'lora.rank_pattern={h_0\.attn:4}' (see README)
    rank_pattern: dict[str, int] = field(default_factory=lambda: _open_dict())
    alpha_pattern: dict[str, float] = field(default_factory=lambda: _open_dict())


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
    # LoRA+ (PEFT's create_loraplus_optimizer): B's learning rate = this x optim.lr (the paper
    # and PEFT's docs suggest 16); null = plain LoRA
    loraplus_lr_ratio: float | None = None


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
    # Validation pairs (the task's validation split, else held out of the training examples:
    # lora_jax.train.data.split_validation; never the eval/test split) for the validation loss,
    # computed at eval points and at the end; 0 disables it.
    val_examples: int = 256
    # validation items (distinct sources) also decoded and scored with the task metric at each
    # validation: metrics.validation.<metric> (0: loss only)
    val_decode_items: int = 0
    remat: str = "none"  # none | block | dots_saveable | full (lora_jax/models/layers.py)
    scan: bool = False  # nn.scan over layers: one compiled block for any depth
    loss_chunk: int | None = None  # target tokens per LM-head chunk in the loss; null = plain
    sort_window: int = 0  # batches whose examples are sorted by length (less padding); 0 = off
    bucket_step: int | None = None  # padded lengths every N tokens; null = powers of two
    # Seed of the batch order; null = `seed`. Set it (e.g. 0) to give runs that differ in `seed`
    # one data order, so hydra/launcher=packed can train them in one pack.
    data_seed: int | None = None


@dataclass
class DataCfg:
    # Sequence packing (lora_jax.tasks.batching.pack_examples): each step's examples first-fit
    # into rows of task.max_len tokens with segment ids and per-example positions, attention
    # within an example only; the same examples per step give the same loss and gradients as
    # padded rows, on fewer token positions. auto = on unless lora.dropout > 0 (dropout draws
    # follow the layout, so they would differ from the padded run's); true | false.
    packing: Any = "auto"
    # tokens per packed row; null = task.max_len. Longer rows fit more examples per row (E2E on
    # SmolLM2 at max_len 128: 75% of positions real at 128, more at 256) at a quadratic
    # attention cost per row (benchmarks/RESULTS.md).
    row_len: int | None = None
    # rows: first-fit into rows of row_len (few shapes: the row count varies) | step: the whole
    # step in one row per data-parallel device, its length the step's tokens rounded up to
    # step_multiple (least padding; one shape per length reached, compiled as it first occurs)
    pack: str = "rows"
    step_multiple: int = 64


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
class PrecisionCfg:  # lora_jax/precision.py; LoRA, optimizer state, logits, loss: always fp32
    compute: str = "auto"  # auto (fp32 on CPU, bf16 on GPU/TPU) | float32 | bfloat16
    base: str = "auto"  # storage of the frozen base: auto | float32 | bfloat16
    matmul: str | None = None  # jax_default_matmul_precision (highest = full fp32); null = default


@dataclass
class MeshCfg:  # lora_jax/sharding.py; data × fsdp = the device count, -1 = the rest
    data: int = 1
    fsdp: int = 1
    lora: str = "replicated"  # replicated | fsdp: LoRA factors and optimizer state placement
    distributed: bool | None = None  # jax.distributed.initialize(); null = when the env says so
    prefetch: int = 2  # batches put on the devices ahead of the step (0 = off)


@dataclass
class Config:
    model: ModelCfg = field(default_factory=ModelCfg)
    task: TaskCfg = field(default_factory=TaskCfg)
    lora: LoraCfg = field(default_factory=LoraCfg)
    optim: OptimCfg = field(default_factory=OptimCfg)
    trainer: TrainerCfg = field(default_factory=TrainerCfg)
    data: DataCfg = field(default_factory=DataCfg)
    logger: LoggerCfg = field(default_factory=LoggerCfg)
    precision: PrecisionCfg = field(default_factory=PrecisionCfg)
    mesh: MeshCfg = field(default_factory=MeshCfg)
    seed: int = 0
    # lora: train the LoRA tree over the frozen base | full: full fine-tuning of every base
    # weight (the baseline row of an ablation table; same loop, data, decoding and metrics)
    method: str = "lora"
    name: str = "run"
    output_dir: str | None = None  # default: Hydra's run dir
    sweep_name: str = "none"  # the sweep this run belongs to (W&B group, report)
    adapter: str | None = None  # a run's checkpoints/ dir: load its LoRA tree (eval_only)


def register() -> None:
    ConfigStore.instance().store(name="config_schema", node=Config)


def conf_dir() -> Path:
    """The Hydra config tree, ``lora_jax/conf``: in a source checkout a symlink to the top-level
    ``conf/``, in an installed wheel a copy of it (pyproject.toml package-data)."""
    return Path(__file__).resolve().parents[1] / "conf"


class SweepNeedsExperiment(Callback):
    """Hydra callback of conf/experiment/required.yaml (what a sweep selects when no experiment
    is given): stops ``+sweep=NAME`` before its first run and names the experiments to pick."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        names = sorted(
            p.stem for p in (conf_dir() / "experiment").glob("*.yaml") if p.stem != "required"
        )
        name = config.get("sweep_name", "NAME")
        raise SystemExit(
            f"error: +sweep={name} needs an experiment, which sets the model, data, steps and lr "
            f"the sweep runs: add experiment=NAME with NAME one of {', '.join(names)} "
            f"(conf/experiment/), e.g. python -m lora_jax.train +sweep={name} "
            "experiment=e2e_offline_smollm2"
        )

    on_run_start = on_multirun_start


def _run_name(model, task, targets, r, alpha, scaling, seed, method="lora", variant="lora",
              init="kaiming", loraplus_lr_ratio=None) -> str:  # fmt: skip
    from lora_jax.lora.naming import run_name

    targets = OmegaConf.to_container(targets) if OmegaConf.is_config(targets) else targets
    return run_name(model, task, targets, r, alpha, scaling, seed, method, variant, init,
                    loraplus_lr_ratio)  # fmt: skip


# Registered on import, so launcher workers that import the app have them too.
OmegaConf.register_new_resolver("run_name", _run_name, replace=True)
