"""The benchmark's tiny mode runs every case end to end and reports consistent figures."""

from __future__ import annotations

from lora_jax.bench.cli import main


def test_bench_tiny_runs_every_case(capsys):
    rows = main(["--tiny", "--warmup", "0", "--repeats", "1", "--cases",
                 "gpt2m-qv-r4,tinyllama-all-r8,tinyllama-full"])  # fmt: skip
    out = capsys.readouterr().out
    assert [r["case"] for r in rows] == ["gpt2m-qv-r4", "tinyllama-all-r8", "tinyllama-full"]
    for r in rows:
        assert r["tokens_per_s"] > 0 and r["step_s"] > 0 and r["trainable"] > 0
        # XLA's count and the formula (4N frozen + 6N adapter + attention) agree to ~2x
        assert 0.5 < r["flops_xla"] / r["flops_formula"] < 2.0, r
        assert r["case"] in out
    lora, full = rows[1], rows[2]  # the same tiny Llama
    assert full["trainable"] > 3 * lora["trainable"]
    assert full["flops_formula"] > lora["flops_formula"]
    assert "MFU n/a" in out  # no peak FLOP/s known for a CPU


def test_bench_tiny_qlora_case_holds_a_packed_base(capsys):
    """--quant nf4 runs the LoRA step over NF4 kernels: same trainable count, a frozen base
    well under the fp32 one (the tiny toy's embeddings/head stay fp32, so not 8x smaller)."""
    args = ["--tiny", "--warmup", "0", "--repeats", "1", "--cases", "tinyllama-all-r8"]
    dense, q = main(args)[0], main([*args, "--quant", "nf4"])[0]
    assert q["trainable"] == dense["trainable"]
    assert q["frozen_bytes"] < 0.8 * dense["frozen_bytes"], (
        q["frozen_bytes"],
        dense["frozen_bytes"],
    )
    assert q["tokens_per_s"] > 0 and abs(q["loss"] - dense["loss"]) < 0.5


FAMILY_CASES = ["qwen25-all-r8", "gemma2-qv-r8", "phi3-qv-r8", "gemma3-qv-r8"]


def test_bench_tiny_runs_each_family_as_peft_builds_it(capsys):
    """Qwen2, Gemma 2 (soft-capped), Phi-3 (fused) and Gemma 3 cases run in lora-jax and in PEFT
    from the same transformers config dict, adapting the same parameters (Phi-3: PEFT puts one
    adapter on all of qkv_proj, lora-jax one per targeted block, the counts by formula)."""
    from lora_jax.bench.cases import CASES, hf_config
    from lora_jax.bench.peft_step import run_peft

    rows = main(["--tiny", "--warmup", "0", "--repeats", "1", "--cases", ",".join(FAMILY_CASES)])
    assert [r["case"] for r in rows] == FAMILY_CASES
    for row in rows:
        case = CASES[row["case"]]
        hf = hf_config(case, tiny=True)
        peft = run_peft(case, hf, False, warmup=0, repeats=1)
        assert row["tokens_per_s"] > 0 and peft["tokens_per_s"] > 0
        if hf["model_type"] != "phi3":
            assert row["trainable"] == peft["trainable"], case.name
            continue
        d, r, layers = hf["hidden_size"], case.r, hf["num_hidden_layers"]
        q = d  # 4 heads of 8
        kv = hf["num_key_value_heads"] * d // hf["num_attention_heads"]
        assert row["trainable"] == layers * r * ((d + q) + (d + kv))  # q and v blocks
        assert peft["trainable"] == layers * r * (d + q + 2 * kv)  # all of qkv_proj
