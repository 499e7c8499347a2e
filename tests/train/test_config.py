"""The paper preset composes with the recipe's values ([R] microsoft/LoRA examples/NLG README,
gpt2_ft.py, gpt2_beam.py; [P] Hu et al. 2021 Table 11), and every value line of the preset
carries a citation comment that points at the paper or the original code, never at a file
outside the repository."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.train.app import CONF_DIR, compose

PAPER = "experiment=e2e_paper_gpt2m"


def test_paper_preset_matches_reference():
    cfg = compose([PAPER])
    assert cfg.model.name == "gpt2-medium"
    assert cfg.task.name == "e2e"
    lora, opt, tr, dec = cfg.lora, cfg.optim, cfg.trainer, cfg.task.decode
    assert (lora.r, lora.alpha, lora.targets, lora.dropout) == (4, 32, "qv", 0.1)
    assert lora.alpha / lora.r == 8  # "α=32 (scale 8)"
    assert opt.name == "adamw" and opt.lr == 2e-4
    assert (opt.b1, opt.b2, opt.eps, opt.weight_decay) == (0.9, 0.999, 1e-6, 0.01)
    assert (opt.warmup_steps, opt.schedule) == (500, "linear")
    assert opt.label_smoothing == 0.1 and opt.grad_clip is None and opt.grad_accum == 1
    assert (tr.batch_size, tr.epochs, tr.max_steps) == (8, 5, None)
    assert cfg.task.max_len == 512
    assert (dec.num_beams, dec.length_penalty, dec.no_repeat_ngram_size, dec.max_new_tokens) == (
        10, 0.9, 4, 64,
    )  # fmt: skip
    assert cfg.seed == 110
    assert cfg.name == "gpt2-medium-e2e-q,v-r4-a32-s110"


def test_paper_preset_every_value_line_is_cited():
    path = Path(CONF_DIR) / "experiment" / "e2e_paper_gpt2m.yaml"
    lines = path.read_text(encoding="utf-8").splitlines()
    uncited = []
    for line in lines:
        s = line.strip()
        if not s or s.startswith("#") or s.startswith("- "):
            continue  # comments, the defaults list entries
        key, _, value = s.partition(":")
        value = value.split("#", 1)[0].strip()
        if not value:
            continue  # a group header ("lora:") or "defaults:"
        if key in ("sweep", "sweep_name"):
            continue  # bookkeeping, not a recipe value
        comment = s.split("#", 1)[1] if "#" in s else ""
        if not re.search(r"\[(P|R|M)\]|Table \d+", comment) or "REFERENCE" in comment:
            uncited.append(line)
    assert not uncited, "value lines without a citation comment:\n" + "\n".join(uncited)


@pytest.mark.parametrize("experiment", ["e2e_paper_gpt2m", "e2e_offline_smollm2"], ids=lambda e: e)
def test_experiments_compose_with_debug(experiment, monkeypatch):
    monkeypatch.setenv("LORA_JAX_E2E_DIR", "/data/e2e")
    cfg = compose([f"experiment={experiment}", "debug=tiny"])
    assert cfg.trainer.max_steps == 4 and cfg.task.max_eval_items == 4


def test_citations_never_point_outside_the_repository():
    # Sources are the paper, the original code or a public page; REFERENCE.md is a workplace
    # note that is not shipped with the repository.
    root = Path(__file__).parents[2]
    files = [p for d in ("lora_jax", "conf") for p in (root / d).rglob("*") if p.suffix in (".py", ".yaml")]  # fmt: skip
    assert files
    offenders = [str(p.relative_to(root)) for p in files if "REFERENCE.md" in p.read_text()]
    assert not offenders, f"cite the paper or the original code instead: {offenders}"
