"""The variants through the training app (tiny GPT-2, fused ``c_attn``): DoRA over PiSSA on all
attention matrices trains (A, B and the magnitude move; the record counts m), a stopped run
resumes to the uninterrupted result exactly, and ``python -m lora_jax.export`` writes a PEFT
adapter that loads (DoRA magnitudes over the whole fused kernel, PiSSA converted to rank 2r).
fp32, matmul precision "highest"."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest

from tests.train.app import load_final_lora, lora_leaves, run_in_process, tiny_overrides

VARIANT = ("lora.targets=qv", "lora.r=4", "lora.variant=dora", "lora.init=pissa",
           "trainer.max_steps=6", "trainer.eval_before=false")  # fmt: skip


@pytest.fixture(scope="module")
def dora_run(tiny_e2e_gpt2_dir, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("dora")
    with jax.default_matmul_precision("highest"):
        rec = run_in_process(tiny_overrides(tiny_e2e_gpt2_dir, *VARIANT), run_dir)
    return run_dir, rec


def test_dora_pissa_trains_and_counts_its_magnitude(dora_run, tiny_e2e_gpt2_dir):
    from lora_jax.lora import LoraConfig
    from lora_jax.lora import init as lora_init
    from lora_jax.models.pretrained import load_model
    from lora_jax.models.registry import lora_modules

    run_dir, rec = dora_run
    assert rec["status"] == "ok", rec.get("error")
    assert rec["config"]["lora"]["variant"] == "dora" and rec["config"]["lora"]["init"] == "pissa"
    lm = load_model(str(tiny_e2e_gpt2_dir))
    cfg = LoraConfig(r=4, targets="qv", variant="dora", init="pissa")
    start, _ = lora_init(jax.random.PRNGKey(0), lm.params, cfg, lora_modules(lm.config))
    d = lm.config.hidden_size
    # q and v blocks of every layer: A [d, 4], B [4, d], m [d]; a0/b0 are data, not counted
    assert rec["params"]["trainable"] == lm.config.num_layers * 2 * (d * 4 + 4 * d + d)
    final = load_final_lora(run_dir, tiny_e2e_gpt2_dir, tiny_overrides(tiny_e2e_gpt2_dir, *VARIANT))
    first = lora_leaves(start)
    moved = {k.rsplit("'", 2)[-2] for k, v in final.items() if not np.allclose(v, first[k])}
    assert moved == {"a", "b", "m"}  # a0, b0 and scale stay


def test_dora_pissa_resumes_exactly(dora_run, tiny_e2e_gpt2_dir, tmp_path):
    ref_dir, ref = dora_run
    ov = tiny_overrides(tiny_e2e_gpt2_dir, *VARIANT)
    with jax.default_matmul_precision("highest"):
        first = run_in_process([*ov, "trainer.stop_after=3"], tmp_path)
        assert first["run"]["stopped_at"] == 3
        res = run_in_process([*ov, "trainer.resume=true"], tmp_path)
    assert res["status"] == "ok" and res["run"]["resumed_at"] == 3
    a, b = (
        load_final_lora(tmp_path, tiny_e2e_gpt2_dir, ov),
        load_final_lora(ref_dir, tiny_e2e_gpt2_dir, ov),
    )
    for k in b:
        np.testing.assert_allclose(a[k], b[k], rtol=0, atol=1e-6 * max(np.abs(b[k]).max(), 1e-3))


@pytest.mark.torch
def test_dora_pissa_export_loads_in_peft(dora_run, tiny_e2e_gpt2_dir, tmp_path):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from lora_jax.export.__main__ import main as export_main
    from lora_jax.run.run_adapter import load_run_adapter

    run_dir, _ = dora_run
    out = export_main([str(run_dir), "--format", "peft", "--out", str(tmp_path / "peft")])
    cfg = json.loads((out / "adapter_config.json").read_text())
    assert cfg["use_dora"] is True and cfg["r"] == 2 * 2 * 4  # q,v blocks of c_attn, PiSSA 2r each
    ra = load_run_adapter(run_dir)
    ids = np.random.default_rng(0).integers(0, ra.model.config.vocab_size, (2, 10))
    with jax.default_matmul_precision("highest"):
        ours = np.asarray(ra.model.module.apply({"params": ra.model.params, "lora": ra.lora},
                                                jax.numpy.asarray(ids))[0])  # fmt: skip
    hf = AutoModelForCausalLM.from_pretrained(tiny_e2e_gpt2_dir, dtype=torch.float32)
    with torch.no_grad():
        theirs = PeftModel.from_pretrained(hf, out).eval()(input_ids=torch.tensor(ids)).logits
    np.testing.assert_allclose(ours, theirs.numpy(), rtol=0, atol=2e-5 * np.abs(ours).max())
