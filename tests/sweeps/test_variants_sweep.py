"""sweeps/hydra/variants.yaml and conf/variant/: each variant composes to PEFT's option values
after the experiment and the lora preset (it wins over both), the sweep's grid is variant × r ×
targets × lr, DoRA jobs get packs of their own, and the record's sweep key names the variant."""

from __future__ import annotations

import pytest
import yaml
from omegaconf import OmegaConf

from tests.train.app import ROOT, compose

WANT = {  # variant -> (lora.variant, lora.init, optim.loraplus_lr_ratio)
    "lora": ("lora", "kaiming", None),
    "dora": ("dora", "kaiming", None),
    "pissa": ("lora", "pissa", None),
    "olora": ("lora", "olora", None),
    "loraplus": ("lora", "kaiming", 16),
}


@pytest.mark.parametrize("variant", list(WANT))
def test_each_variant_composes_over_the_experiment(variant):
    from lora_jax.train.record import sweep_key

    cfg = compose(["+sweep=variants", "experiment=e2e_offline_smollm2", f"variant={variant}",
                   "lora=all", "lora.r=4", "optim.lr=1e-3"])  # fmt: skip
    got = (cfg.lora.variant, cfg.lora.init, cfg.optim.loraplus_lr_ratio)
    assert got == WANT[variant]
    assert cfg.lora.alpha == 16 and cfg.lora.r == 4 and cfg.optim.lr == 1e-3
    label = sweep_key(OmegaConf.to_container(cfg, resolve=False))["variant"]
    assert label == {"loraplus": "lora+16"}.get(variant, variant)


def test_the_grid_and_the_packs(monkeypatch, tmp_path):
    from lora_jax.run.packs import make_packs

    monkeypatch.setenv("LORA_JAX_E2E_DIR", str(tmp_path))  # resolved by the pack key only
    monkeypatch.setenv("LORA_JAX_SMOLLM2_GGUF", str(tmp_path / "model.gguf"))

    params = yaml.safe_load((ROOT / "sweeps/hydra/variants.yaml").read_text())["hydra"]["sweeper"][
        "params"
    ]
    assert params["variant"].split(",") == list(WANT)
    assert params["lora.r"] == "1,4,64" and params["lora"] == "qv,all"
    assert len(str(params["optim.lr"]).split(",")) >= 3
    cfgs = [compose(["+sweep=variants", "experiment=e2e_offline_smollm2", f"variant={v}",
                     f"optim.lr={lr}"]) for v in ("lora", "dora", "pissa") for lr in (1e-3, 3e-3)]  # fmt: skip
    packs = make_packs(cfgs, pack_size=8)
    dora = {i for i, c in enumerate(cfgs) if c.lora.variant == "dora"}
    assert dora in [set(p) for p in packs]  # DoRA jobs pack together, apart from the others
    assert any(len(p) == 4 and not set(p) & dora for p in packs)  # lora and pissa share one
