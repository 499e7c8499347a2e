"""Adapters out to PEFT / transformers and PEFT adapters in (lora_jax/export), checked against
PyTorch: ``peft.PeftModel.from_pretrained`` on the transformers model must give lora-jax's
logits, a PEFT-made adapter imported here must give PEFT's, and the merged transformers folder
must give the adapted logits. fp32 on both sides; JAX matmuls at "highest" precision (exact
fp32 on CPU), torch CPU fp32 matmuls are exact fp32 too. Tolerance 1e-4 relative to the logits'
magnitude; each comparison also checks that the adapter moves the logits far more than that."""

from __future__ import annotations

import json
from pathlib import Path

import jax
import numpy as np
import pytest
from conftest_gguf import smollm2_gguf  # noqa: F401

from lora_jax.export import load_peft, save_merged_hf, save_peft
from lora_jax.lora import LoraConfig
from lora_jax.lora import init as lora_init
from lora_jax.models.pretrained import load_model
from lora_jax.models.registry import lora_modules

pytestmark = pytest.mark.torch
TOL = 1e-4


def _ids(vocab: int) -> np.ndarray:
    return np.random.default_rng(0).integers(0, vocab, (2, 12)).astype(np.int32)


def ours_logits(lm, lora, ids) -> np.ndarray:
    with jax.default_matmul_precision("highest"):
        vars_ = {"params": lm.params} | ({"lora": lora} if lora is not None else {})
        return np.asarray(lm.module.apply(vars_, ids)[0])


def torch_logits(model, ids) -> np.ndarray:
    import torch

    with torch.no_grad():
        return model(torch.tensor(ids, dtype=torch.long)).logits.float().numpy()


def hf_model(path: Path):
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(
        path, dtype=torch.float32, attn_implementation="eager"
    ).eval()


def trained_like(lm, cfg: LoraConfig, seed: int = 1) -> dict:
    """A LoRA tree with non-zero B (as after training), so ΔW ≠ 0."""
    tree, _ = lora_init(jax.random.PRNGKey(seed), lm.params, cfg, lora_modules(lm.config))
    keys = iter(jax.random.split(jax.random.PRNGKey(seed + 100), 1000))
    return jax.tree_util.tree_map_with_path(
        lambda p, x: 0.3 * jax.random.normal(next(keys), x.shape) if p[-1].key == "b" else x,
        tree,
    )


def assert_close_and_moved(got, expected, base):
    scale = max(1.0, float(np.abs(expected).max()))
    np.testing.assert_allclose(got, expected, rtol=0, atol=TOL * scale)
    moved = float(np.abs(expected - base).max())
    assert moved > 100 * TOL * scale, f"the adapter barely changes the logits ({moved})"


CASES = {
    # tiny Llama: q, v and down at r=4 with a rank and an alpha pattern
    "llama_patterns": (
        "llama_gqa",
        LoraConfig(
            r=4,
            alpha=8,
            targets=("q", "v", "down"),
            rank_pattern={r"layers\.1\.self_attn\.v_proj": 2},
            alpha_pattern={"down_proj": 3.0},
        ),
    ),
    # tiny GPT-2: the paper's q,v on the fused c_attn
    "gpt2_qv": ("gpt2", LoraConfig(r=4, alpha=8, targets="qv")),
    # every Linear of Gemma 3 (sliding and global layers), Gemma 2 (soft-capped), Qwen3 (q/k norms)
    "gemma3_all": ("gemma3", LoraConfig(r=4, alpha=8, targets="all")),
    "gemma2_attn": ("gemma2", LoraConfig(r=4, alpha=16, targets="attn")),
    "qwen3_qv_mlp": ("qwen3", LoraConfig(r=2, alpha=8, targets=("q", "v", "gate", "up", "down"))),
    # Phi-3: q,v into the fused qkv_proj (k, v narrower than q: grouped-query heads), and
    # every module (gate/up into gate_up_proj)
    "phi3_qv": ("phi3", LoraConfig(r=4, alpha=8, targets="qv")),
    "phi3_all": ("phi3", LoraConfig(r=2, alpha=8, targets="all")),
}


@pytest.mark.parametrize("case", list(CASES))
def test_exported_adapter_loads_in_peft_with_our_logits(case, make_tiny_hf_model, tmp_path):
    from peft import PeftModel

    kind, cfg = CASES[case]
    path = make_tiny_hf_model(kind)
    lm = load_model(str(path))
    lora = trained_like(lm, cfg)
    ids = _ids(lm.config.vocab_size)
    ours = ours_logits(lm, lora, ids)
    base = ours_logits(lm, None, ids)

    out = save_peft(lora, lm.config, tmp_path / "adapter")
    peft_model = PeftModel.from_pretrained(hf_model(path), out).eval()
    assert_close_and_moved(torch_logits(peft_model, ids), ours, base)

    # the import is the exact inverse (ranks included)
    back = load_peft(out, lm.config)
    np.testing.assert_allclose(ours_logits(lm, back, ids), ours, rtol=0, atol=1e-5)
    shapes = lambda t: jax.tree.map(lambda x: np.shape(x), t)
    assert shapes(back) == shapes(lora)

    pc = json.loads((out / "adapter_config.json").read_text())
    if kind == "gpt2":  # one c_attn adapter of rank 2r, alpha doubled, k rows zero
        assert (pc["r"], pc["lora_alpha"], pc["fan_in_fan_out"]) == (8, 16.0, True)
        assert pc["target_modules"] == ["attn.c_attn"]
        assert "zero" in (out / "README.md").read_text()
    elif case == "phi3_qv":  # one qkv_proj adapter of rank 2r, alpha doubled, k rows zero
        assert (pc["r"], pc["lora_alpha"]) == (8, 16.0)
        assert pc["target_modules"] == ["self_attn.qkv_proj"]
    elif case == "phi3_all":
        assert pc["target_modules"] == ["mlp.down_proj", "mlp.gate_up_proj",
                                        "self_attn.o_proj", "self_attn.qkv_proj"]  # fmt: skip
    elif case == "llama_patterns":
        assert pc["rank_pattern"] == {r"model\.layers\.1\.self_attn\.v_proj": 2}
        assert set(pc["alpha_pattern"].values()) == {3.0}


@pytest.mark.parametrize("kind,targets", [("llama_gqa", ["q_proj", "v_proj", "o_proj"]),
                                          ("gpt2", ["c_attn", "mlp.c_proj"]),
                                          ("phi3", ["qkv_proj", "gate_up_proj", "o_proj"])])  # fmt: skip
def test_peft_made_adapter_imports_with_peft_logits(kind, targets, make_tiny_hf_model, tmp_path):
    import torch
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model

    path = make_tiny_hf_model(kind)
    torch.manual_seed(0)
    pcfg = PeftLoraConfig(
        r=4,
        lora_alpha=6,
        target_modules=targets,
        init_lora_weights=False,  # random A and B: a non-trivial adapter, as after training
        rank_pattern={targets[-1]: 2},
        alpha_pattern={targets[0]: 10},
        fan_in_fan_out=kind == "gpt2",
    )
    peft_model = get_peft_model(hf_model(path), pcfg).eval()
    peft_model.save_pretrained(tmp_path / "peft")
    lm = load_model(str(path))
    ids = _ids(lm.config.vocab_size)
    lora = load_peft(tmp_path / "peft", lm.config)
    assert_close_and_moved(
        ours_logits(lm, lora, ids), torch_logits(peft_model, ids), ours_logits(lm, None, ids)
    )


@pytest.mark.parametrize("kind", ["llama_gqa", "gpt2", "phi3"])
def test_merged_hf_folder_loads_in_transformers(kind, make_tiny_hf_model, tmp_path):
    from lora_jax.run.run_adapter import load_base

    path = make_tiny_hf_model(kind)
    lm, hf_config = load_base(str(path))
    lora = trained_like(lm, LoraConfig(r=4, alpha=8, targets="all"))
    ids = _ids(lm.config.vocab_size)
    out = save_merged_hf(lm.params, lora, lm.config, hf_config, tmp_path / "m", str(path))
    assert (out / "tokenizer.json").is_file()
    assert_close_and_moved(
        torch_logits(hf_model(out), ids), ours_logits(lm, lora, ids), ours_logits(lm, None, ids)
    )


def test_import_errors_name_the_problem(tiny_llama_dir, tmp_path):
    lm = load_model(str(tiny_llama_dir))
    with pytest.raises(FileNotFoundError, match="adapter_config.json"):
        load_peft(tmp_path, lm.config)
    (tmp_path / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "bias": "all"}))
    (tmp_path / "adapter_model.safetensors").write_bytes(b"")
    with pytest.raises(ValueError, match="bias='all'"):
        load_peft(tmp_path, lm.config)


@pytest.mark.slow
def test_real_smollm2_adapter_in_peft(smollm2_gguf, tmp_path):  # noqa: F811
    """The real SmolLM2-135M (GGUF, dequantized to fp32 on both sides): a q,v adapter exported
    here and loaded by PEFT onto transformers' GGUF model gives our logits (one forward)."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    lm = load_model(str(smollm2_gguf))
    lora = trained_like(lm, LoraConfig(r=8, alpha=16, targets="qv"))
    ids = np.asarray([lm.tokenizer.encode("name[The Eagle] food[French] area[riverside]")])
    ref = AutoModelForCausalLM.from_pretrained(
        smollm2_gguf.parent, gguf_file=smollm2_gguf.name, dtype=torch.float32,
        attn_implementation="eager",
    ).eval()  # fmt: skip
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # see test_smollm2.py: contention made torch's pool 10x slower
    try:
        out = save_peft(lora, lm.config, tmp_path / "adapter")
        got = torch_logits(PeftModel.from_pretrained(ref, out).eval(), ids)
    finally:
        torch.set_num_threads(threads)
    assert_close_and_moved(got, ours_logits(lm, lora, ids), ours_logits(lm, None, ids))
