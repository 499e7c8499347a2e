"""The benchmark cases: model shapes (random weights; SmolLM2 and Gemma 3 from their real GGUFs),
batch, LoRA.

Shapes (transformers config dicts, so lora-jax and PEFT build the same model): GPT-2 Medium
(d 1024, 24 layers, 16 heads, vocab 50257); TinyLlama-1.1B (d 2048, ff 5632, 22 layers, 32
heads, 4 kv heads, vocab 32000); Qwen2.5-0.5B (q/k/v biases, 14 heads over 2 kv, tied, vocab
151936); Gemma 2 2B (head_dim 256, alternating sliding/global layers, soft-capping, vocab 256000);
Phi-3-mini (fused qkv_proj / gate_up_proj, vocab 32064). Real checkpoints: SmolLM2-135M
(``$LORA_JAX_SMOLLM2_GGUF``) and Gemma 3 270M (``$LORA_JAX_GEMMA3_GGUF``). ``--tiny`` swaps every
model for a 2-layer toy of the same family so the whole table runs in seconds (CI).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from lora_jax.errors import ConfigError
from lora_jax.models.config import ModelConfig

SHAPES: dict[str, dict[str, Any]] = {
    "gpt2-medium": dict(
        model_type="gpt2", vocab_size=50257, n_embd=1024, n_layer=24, n_head=16, n_inner=4096,
        n_positions=1024, activation_function="gelu_new",
    ),
    "tinyllama": dict(
        model_type="llama", vocab_size=32000, hidden_size=2048, num_hidden_layers=22,
        num_attention_heads=32, num_key_value_heads=4, head_dim=64, intermediate_size=5632,
        max_position_embeddings=2048, tie_word_embeddings=False,
    ),
    "qwen2.5-0.5b": dict(
        model_type="qwen2", vocab_size=151936, hidden_size=896, num_hidden_layers=24,
        num_attention_heads=14, num_key_value_heads=2, intermediate_size=4864,
        max_position_embeddings=32768, rope_theta=1000000.0, tie_word_embeddings=True,
    ),
    "gemma2-2b": dict(
        model_type="gemma2", vocab_size=256000, hidden_size=2304, num_hidden_layers=26,
        num_attention_heads=8, num_key_value_heads=4, head_dim=256, intermediate_size=9216,
        max_position_embeddings=8192, sliding_window=4096, query_pre_attn_scalar=256,
        attn_logit_softcapping=50.0, final_logit_softcapping=30.0,
    ),
    "phi3-mini": dict(
        model_type="phi3", vocab_size=32064, hidden_size=3072, num_hidden_layers=32,
        num_attention_heads=32, num_key_value_heads=32, intermediate_size=8192,
        max_position_embeddings=4096, sliding_window=2047, tie_word_embeddings=False,
    ),
}  # fmt: skip
# the real checkpoints: model -> (environment variable with the GGUF path, its family's toy)
REAL = {"smollm2": ("LORA_JAX_SMOLLM2_GGUF", "tinyllama"),
        "gemma3-270m": ("LORA_JAX_GEMMA3_GGUF", "gemma3")}  # fmt: skip
# --tiny: the same family at 2 layers, d 32 (Gemma 3's toy keeps one sliding and one global layer)
_TOY = dict(vocab_size=128, num_hidden_layers=2, hidden_size=32, num_attention_heads=4,
            num_key_value_heads=2, head_dim=8, intermediate_size=48, pad_token_id=0,
            bos_token_id=1, eos_token_id=2)  # fmt: skip
TINY: dict[str, dict[str, Any]] = {
    "gpt2-medium": {**SHAPES["gpt2-medium"], "vocab_size": 128, "n_embd": 32, "n_layer": 2,
                    "n_head": 2, "n_inner": 64},
    "tinyllama": {**SHAPES["tinyllama"], **_TOY},
    "qwen2.5-0.5b": {**SHAPES["qwen2.5-0.5b"], **_TOY},
    "gemma2-2b": {**SHAPES["gemma2-2b"], **_TOY, "query_pre_attn_scalar": 8, "sliding_window": 8},
    "phi3-mini": {**SHAPES["phi3-mini"], **{k: v for k, v in _TOY.items() if k != "head_dim"},
                  "sliding_window": 8},
    "gemma3": dict(model_type="gemma3_text", **_TOY, max_position_embeddings=128,
                   sliding_window=8, query_pre_attn_scalar=8,
                   layer_types=["sliding_attention", "full_attention"]),
}  # fmt: skip
QV, ALL = ("q", "v"), ("q", "k", "v", "o", "gate", "up", "down")


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    model: str  # a key of SHAPES or REAL
    batch: int
    seq: int
    targets: tuple[str, ...] | None  # None: full fine-tuning
    r: int = 0

    @property
    def full(self) -> bool:
        return self.targets is None

    @property
    def real(self) -> bool:
        return self.model in REAL


CASES = {
    c.name: c
    for c in [
        Case("gpt2m-qv-r4", "gpt2-medium", 8, 512, QV, 4),
        Case("gpt2m-full", "gpt2-medium", 8, 512, None),
        Case("tinyllama-qv-r8", "tinyllama", 8, 1024, QV, 8),
        Case("tinyllama-all-r8", "tinyllama", 8, 1024, ALL, 8),
        Case("tinyllama-all-r64", "tinyllama", 8, 1024, ALL, 64),
        Case("tinyllama-full", "tinyllama", 8, 1024, None),
        Case("smollm2-qv-r4", "smollm2", 16, 512, QV, 4),
        Case("smollm2-all-r8", "smollm2", 16, 512, ALL, 8),
        Case("qwen25-all-r8", "qwen2.5-0.5b", 8, 1024, ALL, 8),
        Case("gemma2-qv-r8", "gemma2-2b", 4, 1024, QV, 8),
        Case("phi3-qv-r8", "phi3-mini", 4, 1024, QV, 8),
        Case("gemma3-qv-r8", "gemma3-270m", 8, 512, QV, 8),
        Case("gemma3-all-r8", "gemma3-270m", 8, 512, ALL, 8),
    ]
}
# the CPU comparison (bench/cpu harness conditions): SmolLM2 at b8 s128, r=8 / r=64;
# Gemma 3 270M at the same batch (its 262k vocabulary: the head dominates the step)
CPU_CASES = {
    c.name: c
    for c in [
        Case("smollm2-qv-r8", "smollm2", 8, 128, QV, 8),
        Case("smollm2-all-r8", "smollm2", 8, 128, ALL, 8),
        Case("smollm2-qv-r64", "smollm2", 8, 128, QV, 64),
        Case("gemma3-cpu-qv-r8", "gemma3-270m", 8, 128, QV, 8),
    ]
}


def hf_config(case: Case, tiny: bool) -> dict[str, Any] | None:
    """The case's transformers config dict (random weights), or None for a real checkpoint."""
    if tiny:
        return dict(TINY[REAL[case.model][1] if case.real else case.model])
    return None if case.real else dict(SHAPES[case.model])


def model_config(case: Case, tiny: bool) -> ModelConfig | None:
    """The case's shape as lora-jax's config, or None for a real checkpoint (its GGUF)."""
    hf = hf_config(case, tiny)
    return None if hf is None else ModelConfig.from_hf(hf, origin=f"bench case {case.name}")


def gguf_path(case: Case) -> str:
    """The real checkpoint's GGUF path from its environment variable."""
    env = REAL[case.model][0]
    path = os.environ.get(env)
    if not path:
        raise ConfigError(f"case {case.name} needs {env}=path/to/the/{case.model}.gguf")
    return path


def lookup(names: str, cpu: bool) -> list[Case]:
    table = {**CASES, **CPU_CASES}
    if names in ("all", ""):
        return list((CPU_CASES if cpu else CASES).values())
    out = []
    for n in names.split(","):
        if n not in table:
            raise ConfigError(f"unknown case {n!r}; known: {', '.join(table)}")
        out.append(table[n])
    return out
