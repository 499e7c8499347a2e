"""Tiny random Hugging Face checkpoints written by transformers' ``save_pretrained``.

Reusable by other test folders: ``tiny_gpt2_dir`` and ``tiny_llama_dir`` (session-scoped folders
with config.json, model.safetensors and a byte-level BPE tokenizer), and ``make_tiny_hf_model``
(a factory for other variants). Weights are redrawn with a larger scale than HF's init (and
non-zero biases and norm scales) so that parity tests exercise every tensor.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

VOCAB = 320  # >= the tokenizer's vocabulary below

CONFIGS: dict[str, dict[str, Any]] = {
    "gpt2": dict(
        model_type="gpt2", vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=64,
        bos_token_id=0, eos_token_id=0,
    ),
    "llama_gqa": dict(
        model_type="llama", vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, intermediate_size=48,
        max_position_embeddings=64, tie_word_embeddings=False, rms_norm_eps=1e-5,
    ),
    "llama_tied": dict(
        model_type="llama", vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=4, intermediate_size=48,
        max_position_embeddings=64, tie_word_embeddings=True, head_dim=16,
    ),
    "qwen2": dict(
        model_type="qwen2", vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, intermediate_size=48,
        max_position_embeddings=64, tie_word_embeddings=True, rope_theta=1e6,
    ),
    "llama3_rope": dict(
        model_type="llama", vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, intermediate_size=64,
        max_position_embeddings=256, tie_word_embeddings=False, rope_theta=500000.0,
        rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                      "high_freq_factor": 4.0, "original_max_position_embeddings": 32},
        attention_bias=True, mlp_bias=True,
    ),
    "mistral": dict(
        model_type="mistral", vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, intermediate_size=48,
        max_position_embeddings=64, sliding_window=None,
    ),
    # Gemma 3: sliding (window 4, local RoPE base 100), global (base 1000), sliding; a score
    # scale that is not head_dim^-0.5; tied head
    "gemma3": dict(
        model_type="gemma3_text", vocab_size=VOCAB, hidden_size=32, num_hidden_layers=3,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, intermediate_size=48,
        max_position_embeddings=64, sliding_window=4, sliding_window_pattern=2,
        query_pre_attn_scalar=24, rope_theta=1000.0, rope_local_base_freq=100.0,
    ),
    # Gemma 2: caps low enough that the random weights' scores and logits reach them
    "gemma2": dict(
        model_type="gemma2", vocab_size=VOCAB, hidden_size=32, num_hidden_layers=3,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, intermediate_size=48,
        max_position_embeddings=64, sliding_window=4, query_pre_attn_scalar=24,
        attn_logit_softcapping=2.0, final_logit_softcapping=3.0,
    ),
    # Qwen2 sliding from max_window_layers on (layer 0 global, layer 1 window 4)
    "qwen2_window": dict(
        model_type="qwen2", vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, intermediate_size=48,
        max_position_embeddings=64, use_sliding_window=True, sliding_window=4,
        max_window_layers=1,
    ),
    "qwen3": dict(
        model_type="qwen3", vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, intermediate_size=48,
        max_position_embeddings=64, tie_word_embeddings=True,
    ),
    # Phi-3: fused qkv_proj (grouped-query: k, v narrower than q) and gate_up_proj, RoPE on
    # half of each head, a sliding window of 6 in every layer
    "phi3": dict(
        model_type="phi3", vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, intermediate_size=48,
        max_position_embeddings=64, partial_rotary_factor=0.5, sliding_window=6,
        tie_word_embeddings=False, pad_token_id=0, bos_token_id=0, eos_token_id=0,
    ),
    # Phi-3 128k-style LongRoPE: short factors up to 16 positions, long ones past them
    "phi3_longrope": dict(
        model_type="phi3", vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=4, intermediate_size=48,
        max_position_embeddings=64, original_max_position_embeddings=16,
        rope_scaling={"rope_type": "longrope", "short_factor": [1.0, 1.3, 1.9, 2.8],
                      "long_factor": [1.5, 2.5, 4.0, 9.0]},
        tie_word_embeddings=False, pad_token_id=0, bos_token_id=0, eos_token_id=0,
    ),
}  # fmt: skip


def _randomize(model: Any, seed: int) -> None:
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            is_norm = "norm" in name or ".ln_" in name or name.startswith("transformer.ln_f")
            if is_norm and name.endswith("weight"):
                p.copy_(1.0 + 0.2 * noise)
            else:
                p.copy_(0.15 * noise)


def _tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    corpus = ["name[The Eagle] eatType[coffee shop] food[French]", "The Eagle is a coffee shop."]
    tok.train_from_iterator(corpus * 20, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|endoftext|>", bos_token="<|endoftext|>"
    )


def write_tiny_hf_model(out: Path, kind: str, seed: int = 0, **overrides: Any) -> Path:
    """Write a tiny random ``kind`` (a key of CONFIGS) model + tokenizer to ``out``."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    kw = {**CONFIGS[kind], **overrides}
    cfg = AutoConfig.for_model(**kw)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg, attn_implementation="eager")
    _randomize(model, seed)
    model.save_pretrained(out)
    _tokenizer().save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def make_tiny_hf_model(tmp_path_factory):
    """Factory ``(kind, seed=0, **config_overrides) -> Path`` of a saved tiny HF model (memoized:
    treat the folder as read-only)."""

    made: dict[str, Path] = {}

    def make(kind: str, seed: int = 0, **overrides: Any) -> Path:
        key = repr((kind, seed, sorted(overrides.items())))
        if key not in made:
            out = tmp_path_factory.mktemp(f"tiny_{kind}")
            made[key] = write_tiny_hf_model(out, kind, seed, **overrides)
        return made[key]

    return make


@pytest.fixture(scope="session")
def tiny_gpt2_dir(make_tiny_hf_model) -> Path:
    return make_tiny_hf_model("gpt2")


@pytest.fixture(scope="session")
def tiny_llama_dir(make_tiny_hf_model) -> Path:
    return make_tiny_hf_model("llama_gqa")
