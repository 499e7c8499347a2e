"""``hydra/launcher: packed`` in Hydra's ConfigStore (the rule: lora_jax/packed/group.py)."""

from dataclasses import dataclass, field

from hydra.core.config_store import ConfigStore


@dataclass
class PackedLauncherConf:
    _target_: str = "hydra_plugins.lora_jax_packed.packed_launcher.PackedLauncher"
    pack_size: int = 8  # at most this many jobs per pack
    # a job's largest rank r goes to the first band with r <= bound; [] = no split by rank
    rank_bands: list[int] = field(default_factory=lambda: [16])


ConfigStore.instance().store(
    group="hydra/launcher", name="packed", node=PackedLauncherConf, provider="lora_jax"
)
