"""Target labels and run names come from the modules, never from a typed preset name; the run
record keeps α and the scale of each adapted module."""

from __future__ import annotations

import pytest

from lora_jax.lora.naming import label_of_resolved, label_of_targets, run_name
from lora_jax.lora.targeting import Target
from lora_jax.train import record


@pytest.mark.parametrize(
    ("targets", "label"),
    [
        ("qv", "q,v"),
        ("attn", "q,k,v,o"),
        ("all", "q,k,v,o,gate,up,down"),
        (["q", "k", "v", "o", "up", "down"], "q,k,v,o,up,down"),
        (["down", "q", "up"], "q,up,down"),  # canonical order, whatever the order written
        (["qk", "v"], "q,k,v"),  # presets and names mix
        ([r"h\.0\.attn\.c_attn"], r"h\.0\.attn\.c_attn"),  # a regex: the list itself
    ],
)
def test_label_of_targets(targets, label):
    assert label_of_targets(targets) == label


def _target(name: str, layer: int, r: int, alpha: float, scale: float) -> Target:
    return Target(("h_0", "attn", name), name, layer, 0, 1, 32, 32, r=r, alpha=alpha, scale=scale)


def test_resolved_label_and_per_module_scale_in_the_record():
    # GPT-2 has no gate: the mlp preset resolves to up, down; an alpha_pattern gives up α=16.
    targets = [_target("up", 0, 4, 16.0, 4.0), _target("up", 1, 4, 16.0, 4.0),
               _target("down", 0, 4, 8.0, 2.0), _target("down", 1, 4, 8.0, 2.0)]  # fmt: skip
    assert label_of_resolved(targets) == "up,down"
    config = {"lora": {"targets": "mlp", "r": 4, "alpha": 8.0, "scaling": "standard"},
              "optim": {"lr": 2e-4}, "model": {"name": "gpt2"}, "task": {"name": "e2e"},
              "seed": 3, "sweep_name": "rank_table"}  # fmt: skip
    key = record.sweep_key(config)
    assert key["targets"] == "gate,up,down" and key["scale"] == 2.0  # compose time, no model
    rec = {"sweep": key}
    record.set_targets(rec, targets)
    assert rec["sweep"]["targets"] == rec["lora"]["label"] == "up,down"
    assert rec["sweep"]["alpha"] == [8.0, 16.0] and rec["sweep"]["scale"] == [2.0, 4.0]
    assert rec["lora"]["modules"] == {
        "up": {"r": 4, "alpha": 16.0, "scale": 4.0, "blocks": 2},
        "down": {"r": 4, "alpha": 8.0, "scale": 2.0, "blocks": 2},
    }
    assert rec["lora"]["layers"] == [0, 1]


def test_run_name():
    assert run_name("gpt2", "e2e", ["q", "v"], 4, 32.0, "standard", 0) == "gpt2-e2e-q,v-r4-a32-s0"
    assert run_name("gpt2", "e2e", "all", 8, 0.5, "rslora", 1) == (
        "gpt2-e2e-q,k,v,o,gate,up,down-r8-a0.5-rslora-s1"
    )


def test_full_fine_tuning_is_named_full_not_after_the_lora_defaults():
    # method=full trains no LoRA: the name carries no targets, r or alpha
    assert run_name("gpt2", "e2e", ["q", "v"], 8, 8.0, "standard", 2, "full") == "gpt2-e2e-full-s2"
    assert run_name("gpt2", "e2e", ["q", "v"], 8, 8.0, "standard", 2, "lora") == (
        "gpt2-e2e-q,v-r8-a8-s2"
    )
    from tests.train.app import compose

    assert compose(["method=full", "seed=3"]).name.endswith("-full-s3")
    assert compose(["seed=3"]).name.endswith("-q,v-r8-a8-s3")


@pytest.mark.parametrize(
    ("variant", "want"),
    [("dora", "-q,v-r8-a16-dora-s0"), ("pissa", "-q,v-r8-a16-pissa-s0"),
     ("olora", "-q,v-r8-a16-olora-s0"), ("loraplus", "-q,v-r8-a16-loraplus16-s0")],
)  # fmt: skip
def test_variant_runs_are_named_by_their_variant(variant, want):
    from tests.train.app import compose

    cfg = compose([f"variant={variant}", "lora.alpha=16"])
    assert cfg.name.endswith(want)
    assert compose(["variant=pissa", "lora.init=pissa_niter_4"]).name.endswith("-pissa-s0")
