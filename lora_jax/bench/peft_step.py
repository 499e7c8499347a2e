"""The same case in HF PEFT, same process: eager and ``torch.compile``; bf16 autocast on GPU,
fp32 on CPU; AdamW on the trainable params; loss via ``labels=input_ids``. Conditions copied
from the project's PEFT anchor (random init, dropout 0, N timed steps after warm-up)."""

from __future__ import annotations

import os
import statistics
import time
from typing import Any

from lora_jax.bench.cases import Case, gguf_path

HF_LLAMA = {"q": "q_proj", "k": "k_proj", "v": "v_proj", "o": "o_proj",
            "gate": "gate_proj", "up": "up_proj", "down": "down_proj"}  # fmt: skip
# Phi-3's fused modules: PEFT adapts all of qkv_proj / gate_up_proj (one rank-r adapter each)
HF_PHI3 = {**HF_LLAMA, "q": "qkv_proj", "k": "qkv_proj", "v": "qkv_proj", "gate": "gate_up_proj",
           "up": "gate_up_proj"}  # fmt: skip
HF_GPT2 = {"q": "c_attn", "k": "c_attn", "v": "c_attn", "o": "attn.c_proj", "up": "c_fc",
           "down": "mlp.c_proj"}  # fmt: skip


def _hf_model(case: Case, hf: dict[str, Any] | None):
    """The case's transformers model: random weights from its config dict (seed 0), or the
    real checkpoint through transformers' GGUF loader."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    if hf is None:
        gguf = gguf_path(case)
        d, name = os.path.dirname(gguf), os.path.basename(gguf)
        return AutoModelForCausalLM.from_pretrained(d, gguf_file=name, dtype=torch.float32)
    hf = dict(hf)
    config = AutoConfig.for_model(hf.pop("model_type"), **hf)
    return AutoModelForCausalLM.from_config(config, dtype=torch.float32)


def _quantized(model, quant: str):
    """The same weights reloaded through bitsandbytes (QLoRA: NF4, double quantization, bf16
    compute; or LLM.int8), the way PEFT users load a QLoRA base."""
    import tempfile

    import torch
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    bnb = (
        BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                           bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=torch.bfloat16)
        if quant == "nf4"
        else BitsAndBytesConfig(load_in_8bit=True)
    )  # fmt: skip
    with tempfile.TemporaryDirectory() as d:
        model.save_pretrained(d)
        return AutoModelForCausalLM.from_pretrained(d, quantization_config=bnb)


def run_peft(
    case: Case,
    hf: dict[str, Any] | None,
    compile_: bool,
    warmup: int = 2,
    repeats: int = 5,
    quant: str = "none",
) -> dict:
    """``{"step_s", "tokens_per_s", "peak_bytes" (CUDA only), "trainable"}`` of one variant."""
    import torch
    from peft import LoraConfig, get_peft_model

    dev = "cuda" if torch.cuda.is_available() else "cpu"
    model = _hf_model(case, hf)
    if quant != "none":
        model = _quantized(model, quant)
    if not case.full:
        names = {"gpt2": HF_GPT2, "phi3": HF_PHI3}.get(model.config.model_type, HF_LLAMA)
        targets = sorted({names[t] for t in case.targets})
        lcfg = LoraConfig(r=case.r, lora_alpha=2 * case.r, target_modules=targets, lora_dropout=0.0)
        model = get_peft_model(model, lcfg)
    model = (model if quant != "none" else model.to(dev)).train()  # bnb places its own weights
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=2e-4, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.01)
    fwd = torch.compile(model) if compile_ else model
    x = torch.randint(0, model.config.vocab_size, (case.batch, case.seq), device=dev)

    def step():
        with torch.autocast(dev, dtype=torch.bfloat16, enabled=dev == "cuda"):
            out = fwd(input_ids=x, labels=x, use_cache=False)
        out.loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if dev == "cuda":
            torch.cuda.synchronize()
        return float(out.loss.detach())

    for _ in range(warmup + 1):
        step()
    if dev == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    s = statistics.median(times)
    out = {"step_s": s, "tokens_per_s": case.batch * case.seq / s,
           "trainable": sum(p.numel() for p in params)}  # fmt: skip
    out["peak_bytes"] = torch.cuda.max_memory_allocated() if dev == "cuda" else None
    return out
