"""The benchmark cases: model shapes (random weights; SmolLM2 from its real GGUF), batch, LoRA.

Shapes: GPT-2 Medium (d 1024, 24 layers, 16 heads, vocab 50257); the TinyLlama-1.1B shape
(d 2048, ff 5632, 22 layers, 32 heads, 4 kv heads, vocab 32000); SmolLM2-135M (the real
checkpoint from ``$LORA_JAX_SMOLLM2_GGUF``). ``--tiny`` swaps every model for a 2-layer toy of
the same family so the whole table runs in seconds (CI).
"""

from __future__ import annotations

import dataclasses

from lora_jax.errors import ConfigError
from lora_jax.models.config import ModelConfig

GPT2_MEDIUM = ModelConfig(
    model_type="gpt2", vocab_size=50257, hidden_size=1024, num_layers=24, num_heads=16,
    num_kv_heads=16, head_dim=64, intermediate_size=4096, max_position_embeddings=1024,
    attention_bias=True, mlp_bias=True, tie_word_embeddings=True, activation="gelu_new",
)  # fmt: skip
TINYLLAMA = ModelConfig(
    model_type="llama", vocab_size=32000, hidden_size=2048, num_layers=22, num_heads=32,
    num_kv_heads=4, head_dim=64, intermediate_size=5632, max_position_embeddings=2048,
    tie_word_embeddings=False,
)  # fmt: skip
TINY = {
    "gpt2": GPT2_MEDIUM.replace(vocab_size=128, hidden_size=32, num_layers=2, num_heads=2,
                                num_kv_heads=2, head_dim=16, intermediate_size=64),
    "llama": TINYLLAMA.replace(vocab_size=128, hidden_size=32, num_layers=2, num_heads=4,
                               num_kv_heads=2, head_dim=8, intermediate_size=48),
}  # fmt: skip
QV, ALL = ("q", "v"), ("q", "k", "v", "o", "gate", "up", "down")


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    model: str  # "gpt2-medium" | "tinyllama" | "smollm2"
    batch: int
    seq: int
    targets: tuple[str, ...] | None  # None: full fine-tuning
    r: int = 0

    @property
    def full(self) -> bool:
        return self.targets is None


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
    ]
}
# the CPU comparison (bench/cpu harness conditions): SmolLM2 at b8 s128, r=8 / r=64
CPU_CASES = {
    c.name: c
    for c in [
        Case("smollm2-qv-r8", "smollm2", 8, 128, QV, 8),
        Case("smollm2-all-r8", "smollm2", 8, 128, ALL, 8),
        Case("smollm2-qv-r64", "smollm2", 8, 128, QV, 64),
    ]
}


def model_config(case: Case, tiny: bool) -> ModelConfig | None:
    """The case's shape, or None for SmolLM2 (loaded from its GGUF)."""
    if tiny:
        return TINY["gpt2" if case.model == "gpt2-medium" else "llama"]
    return {"gpt2-medium": GPT2_MEDIUM, "tinyllama": TINYLLAMA}.get(case.model)


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
