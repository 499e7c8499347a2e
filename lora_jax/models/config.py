"""One model config for every family we implement, built from a Hugging Face ``config.json``
dict (or GGUF metadata translated to one). Field names follow ``transformers``."""

from __future__ import annotations

import dataclasses
from typing import Any

from lora_jax.errors import ConfigError, DataError

SUPPORTED_ARCHITECTURES = ("gpt2", "llama", "mistral", "qwen2")

# Which HF ``model_type`` maps to which of our Flax implementations.
FAMILY = {"gpt2": "gpt2", "llama": "llama", "mistral": "llama", "qwen2": "llama"}


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    model_type: str  # "gpt2" | "llama" | "mistral" | "qwen2"
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    max_position_embeddings: int
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    rope_scaling: dict[str, Any] | None = None  # e.g. {"rope_type": "llama3", "factor": 8, ...}
    tie_word_embeddings: bool = False
    attention_bias: bool = False  # q/k/v biases (Qwen2: True)
    mlp_bias: bool = False
    activation: str = "silu"  # GPT-2: "gelu_new"
    sliding_window: int | None = None
    # packed rows longer than 2 blocks (data.pack=step): each block of this many query tokens
    # attends to keys of its own block and the one before only, O(T * 2 * block) instead of
    # O(T^2); exact when no segment (example) is longer than the block (task.max_len). None =
    # the whole row (lora_jax.models.attention).
    packed_block: int | None = None
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None
    pad_token_id: int | None = None

    @property
    def family(self) -> str:
        return FAMILY[self.model_type]

    def replace(self, **kw: Any) -> ModelConfig:
        return dataclasses.replace(self, **kw)

    @classmethod
    def from_hf(cls, hf: dict[str, Any], origin: str = "config.json") -> ModelConfig:
        """Build from a transformers ``config.json`` dict; unknown architectures are refused.
        ``origin`` names the file in errors (a missing or ill-typed field)."""
        try:
            return cls._from_hf(hf)
        except KeyError as e:
            raise DataError(
                f"{origin}: lacks {e.args[0]!r}, which a {hf.get('model_type')} config needs; "
                "use the config.json written by transformers' save_pretrained for this model"
            ) from e
        except (TypeError, ZeroDivisionError) as e:
            raise DataError(
                f"{origin}: a field has a wrong type or value ({e}); use the config.json written "
                "by transformers' save_pretrained for this model"
            ) from e

    @classmethod
    def _from_hf(cls, hf: dict[str, Any]) -> ModelConfig:
        if not isinstance(hf, dict):
            raise TypeError(f"expected a JSON object, got {type(hf).__name__}")
        mt = hf.get("model_type")
        if mt not in FAMILY:
            raise ConfigError(
                f"unsupported architecture model_type={mt!r}; lora-jax implements "
                f"{', '.join(SUPPORTED_ARCHITECTURES)}"
            )
        if mt == "gpt2":
            d, h = hf["n_embd"], hf["n_head"]
            return cls(
                model_type=mt,
                vocab_size=hf["vocab_size"],
                hidden_size=d,
                num_layers=hf["n_layer"],
                num_heads=h,
                num_kv_heads=h,
                head_dim=d // h,
                intermediate_size=hf.get("n_inner") or 4 * d,
                max_position_embeddings=hf["n_positions"],
                norm_eps=hf.get("layer_norm_epsilon", 1e-5),
                tie_word_embeddings=True,
                attention_bias=True,
                mlp_bias=True,
                activation=hf.get("activation_function", "gelu_new"),
                bos_token_id=hf.get("bos_token_id"),
                eos_token_id=hf.get("eos_token_id"),
                pad_token_id=hf.get("pad_token_id"),
            )
        d, h = hf["hidden_size"], hf["num_attention_heads"]
        rope_scaling = hf.get("rope_scaling")
        rope_theta = hf.get("rope_theta")
        rp = hf.get("rope_parameters")  # transformers >= 5 nests rope settings here
        if isinstance(rp, dict):
            rope_theta = rope_theta or rp.get("rope_theta")
            if rp.get("rope_type", "default") != "default":
                rope_scaling = rope_scaling or {k: v for k, v in rp.items() if k != "rope_theta"}
        if rope_scaling and rope_scaling.get("rope_type", rope_scaling.get("type")) == "default":
            rope_scaling = None
        return cls(
            model_type=mt,
            vocab_size=hf["vocab_size"],
            hidden_size=d,
            num_layers=hf["num_hidden_layers"],
            num_heads=h,
            num_kv_heads=hf.get("num_key_value_heads") or h,
            head_dim=hf.get("head_dim") or d // h,
            intermediate_size=hf["intermediate_size"],
            max_position_embeddings=hf.get("max_position_embeddings", 2048),
            norm_eps=hf.get("rms_norm_eps", 1e-6),
            rope_theta=float(rope_theta or 10000.0),
            rope_scaling=rope_scaling,
            tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
            attention_bias=bool(hf.get("attention_bias", mt == "qwen2")),
            mlp_bias=bool(hf.get("mlp_bias", False)),
            activation=hf.get("hidden_act", "silu"),
            # Mistral configs carry sliding_window without a use_sliding_window switch (Qwen2 has one)
            sliding_window=hf.get("sliding_window")
            if (mt == "mistral" or hf.get("use_sliding_window"))
            else None,
            bos_token_id=hf.get("bos_token_id"),
            eos_token_id=hf.get("eos_token_id"),
            pad_token_id=hf.get("pad_token_id"),
        )
