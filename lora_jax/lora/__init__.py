"""LoRA core: config, targeting, the adapter pytree, merge, and the optax split."""

from lora_jax.lora.config import LoraConfig
from lora_jax.lora.layer import LoraDense
from lora_jax.lora.optim import make_optimizer, trainable_labels
from lora_jax.lora.param_counts import param_report
from lora_jax.lora.params import (
    count_params,
    count_trainable,
    delta,
    init,
    iter_adapters,
    merge,
    unmerge,
)
from lora_jax.lora.targeting import PRESETS, Target, candidates, resolve

__all__ = [
    "PRESETS",
    "LoraConfig",
    "LoraDense",
    "Target",
    "candidates",
    "count_params",
    "count_trainable",
    "delta",
    "init",
    "iter_adapters",
    "make_optimizer",
    "merge",
    "param_report",
    "resolve",
    "trainable_labels",
    "unmerge",
]
