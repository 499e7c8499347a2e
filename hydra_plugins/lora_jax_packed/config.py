"""``hydra/launcher: packed`` in Hydra's ConfigStore (the rule: lora_jax/packed/group.py)."""

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore


@dataclass
class PackedLauncherConf:
    _target_: str = "hydra_plugins.lora_jax_packed.packed_launcher.PackedLauncher"
    # at most this many jobs per pack, or "auto": as many as the compiled step's memory
    # analysis fits in the budget (lora_jax/packed/memory.py)
    pack_size: Any = 8
    memory_fraction: float = 0.8  # auto: share of the device's (CPU: host's available) memory
    memory_budget_bytes: int | None = None  # auto: an explicit budget instead of the fraction
    # a job's largest rank r goes to the first band with r <= bound; [] = no split by rank
    rank_bands: list[int] = field(default_factory=lambda: [16])


ConfigStore.instance().store(
    group="hydra/launcher", name="packed", node=PackedLauncherConf, provider="lora_jax"
)
