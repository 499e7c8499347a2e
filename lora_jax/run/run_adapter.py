"""A finished run's adapter, rebuilt from its run directory: the composed config (from
``results.json``, else Hydra's ``.hydra/config.yaml``), the frozen base model it was trained on,
and the LoRA tree restored from ``checkpoints/``. Used by the analysis and the exporters.

    ra = load_run_adapter("runs/2026-11-25/12-00-00-smollm2-135m-e2e-qv-r8-a16-s0")
    ra.lora        # {"layers_0": {"self_attn": {"q_proj": {"q": {"a", "b", "scale"}}}}, ...}
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import jax

from lora_jax.errors import MissingFile
from lora_jax.lora import LoraConfig, Target
from lora_jax.lora import init as lora_init
from lora_jax.models.pretrained import LoadedModel
from lora_jax.models.registry import lora_modules
from lora_jax.train.record import load as load_record


@dataclasses.dataclass
class RunAdapter:
    run_dir: Path
    config: dict[str, Any]  # the run's composed, resolved config
    model: LoadedModel
    hf_config: dict[str, Any]  # the base checkpoint's transformers config (for merged export)
    lora_config: LoraConfig
    targets: list[Target]
    lora: dict
    init_lora: dict  # the tree at step 0 (same key as lora_jax.run.app: PRNGKey(seed))


def run_config(run_dir: str | Path) -> dict[str, Any]:
    """The resolved config a run used: ``results.json["config"]`` or ``.hydra/config.yaml``."""
    run_dir = Path(run_dir)
    if (run_dir / "results.json").is_file():
        cfg = load_record(run_dir).get("config")
        if cfg:
            return cfg
    hydra = run_dir / ".hydra" / "config.yaml"
    if hydra.is_file():
        from omegaconf import OmegaConf

        return OmegaConf.to_container(OmegaConf.load(hydra), resolve=True)
    raise MissingFile(
        f"{run_dir} is not a run directory: it has neither results.json nor .hydra/config.yaml "
        "(pass the folder `python -m lora_jax.train` wrote, e.g. runs/<date>/<time>-<name>)"
    )


def lora_config_of(cfg: dict[str, Any]) -> LoraConfig:
    """The LoraConfig a run's ``lora`` config group describes (as lora_jax.run.app builds it)."""
    lora = {k: v for k, v in cfg["lora"].items() if k != "preset"}
    return LoraConfig.from_dict(lora | {"seed": cfg.get("seed", 0)})


def load_run_adapter(
    run_dir: str | Path,
    step: int | None = None,
    base: tuple[LoadedModel, dict[str, Any]] | None = None,
) -> RunAdapter:
    """Config, base model (fp32) and trained LoRA tree of a run (its latest checkpoint).
    ``base``: an already loaded ``load_base(source)`` to reuse across runs of one model."""
    from lora_jax.train.checkpoint import adapter_meta, load_adapter

    run_dir = Path(run_dir)
    cfg = run_config(run_dir)
    ckpt = run_dir / "checkpoints"
    if not ckpt.is_dir():
        raise MissingFile(
            f"{run_dir} has no checkpoints/ folder; the run did not save its adapter "
            "(train with trainer.ckpt_every, or let the run finish)"
        )
    lm, hf_config = base or load_base(cfg["model"]["source"])
    lcfg = lora_config_of(cfg)
    key = jax.random.PRNGKey(cfg.get("seed", 0))
    template, targets = lora_init(key, lm.params, lcfg, lora_modules(lm.config))
    expected = adapter_meta(lm.config, cfg["lora"], targets)  # checked against the stored one
    lora, _ = load_adapter(ckpt, template, step, expected=expected)
    return RunAdapter(run_dir, cfg, lm, hf_config, lcfg, targets, lora, template)


def load_base(source: str) -> tuple[LoadedModel, dict[str, Any]]:
    """The fp32 base model of ``source`` and its transformers config dict (as
    :func:`lora_jax.models.pretrained.load_model`, keeping the config)."""
    from lora_jax.models.config import ModelConfig
    from lora_jax.models.convert import params_from_hf
    from lora_jax.models.load import load_checkpoint
    from lora_jax.models.registry import build_model

    hf_config, state, tok = load_checkpoint(source)
    cfg = ModelConfig.from_hf(hf_config)
    params = params_from_hf(state, cfg)
    return LoadedModel(build_model(cfg), params, cfg, tok), dict(hf_config)
