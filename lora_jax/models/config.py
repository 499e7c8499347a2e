"""One model config for every family we implement, built from a Hugging Face ``config.json``
dict (or GGUF metadata translated to one). Field names follow ``transformers``."""

from __future__ import annotations

import dataclasses
from typing import Any

from lora_jax.errors import ConfigError, DataError

# Which HF ``model_type`` maps to which of our Flax implementations (one file per family).
FAMILY = {
    "gpt2": "gpt2",
    "llama": "llama",
    "mistral": "llama",
    "qwen2": "llama",
    "qwen3": "llama",
    "gemma2": "gemma",
    "gemma3_text": "gemma",
    "phi3": "phi3",
}
SUPPORTED_ARCHITECTURES = tuple(FAMILY)
SLIDING, FULL = "sliding_attention", "full_attention"  # transformers' layer_types values


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    model_type: str  # a key of FAMILY
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
    # per layer "sliding_attention" | "full_attention" (transformers' layer_types): which layers
    # attend within sliding_window; None = every layer does when sliding_window is set (Mistral)
    layer_types: tuple[str, ...] | None = None
    rope_local_theta: float | None = None  # Gemma 3: RoPE base of the sliding layers
    qk_norm: bool = False  # RMSNorm over each head's q and k before RoPE (Qwen3, Gemma 3)
    query_pre_attn_scalar: float | None = None  # Gemma: scores scaled by this^-0.5, not hd^-0.5
    attn_logit_softcapping: float | None = None  # Gemma 2: scores -> c·tanh(scores / c)
    final_logit_softcapping: float | None = None  # Gemma 2 (and Gemma 3 when set): logits too
    partial_rotary_factor: float = 1.0  # Phi-3: RoPE on the first factor·head_dim dims only
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

    def window(self, layer: int) -> int | None:
        """The sliding window of layer ``layer`` (None: it attends to every earlier token)."""
        if self.sliding_window is None:
            return None
        if self.layer_types is None or self.layer_types[layer] == SLIDING:
            return self.sliding_window
        return None

    @property
    def any_window(self) -> int | None:
        """``sliding_window`` when some layer slides, else None."""
        return self.sliding_window if any(map(self.window, range(self.num_layers))) else None

    @property
    def attn_scale(self) -> float | None:
        """The attention score scale when it is not 1/√head_dim (Gemma), else None."""
        q = self.query_pre_attn_scalar
        return None if q is None else float(q) ** -0.5

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
        n_layers = hf["num_hidden_layers"]
        rope_theta, rope_scaling, local_theta, partial = _rope(hf)
        if rope_scaling and rope_scaling.get("rope_type", rope_scaling.get("type")) == "longrope":
            # Phi-3 keeps the pretraining length outside the rope dict; transformers prefers it
            orig = hf.get("original_max_position_embeddings")
            orig = orig or rope_scaling.get("original_max_position_embeddings")
            rope_scaling = {**rope_scaling, "original_max_position_embeddings": orig}
        gemma = FAMILY[mt] == "gemma"
        return cls(
            model_type=mt,
            vocab_size=hf["vocab_size"],
            hidden_size=d,
            num_layers=n_layers,
            num_heads=h,
            num_kv_heads=hf.get("num_key_value_heads") or h,
            head_dim=hf.get("head_dim") or d // h,
            intermediate_size=hf["intermediate_size"],
            max_position_embeddings=hf.get("max_position_embeddings", 2048),
            norm_eps=hf.get("rms_norm_eps", 1e-6),
            rope_theta=rope_theta,
            rope_scaling=rope_scaling,
            tie_word_embeddings=bool(hf.get("tie_word_embeddings", gemma)),
            attention_bias=bool(hf.get("attention_bias", mt == "qwen2")),
            mlp_bias=bool(hf.get("mlp_bias", False)),
            # Gemma configs name it hidden_activation (gelu_pytorch_tanh)
            activation=hf.get("hidden_activation") or hf.get("hidden_act", "silu"),
            sliding_window=_sliding_window(hf, mt),
            layer_types=_layer_types(hf, mt, n_layers),
            rope_local_theta=local_theta if mt == "gemma3_text" else None,
            qk_norm=mt in ("qwen3", "gemma3_text"),
            query_pre_attn_scalar=hf.get("query_pre_attn_scalar", 256) if gemma else None,
            attn_logit_softcapping=hf.get("attn_logit_softcapping") if gemma else None,
            final_logit_softcapping=hf.get("final_logit_softcapping") if gemma else None,
            partial_rotary_factor=float(partial),
            bos_token_id=hf.get("bos_token_id"),
            eos_token_id=hf.get("eos_token_id"),
            pad_token_id=hf.get("pad_token_id"),
        )


def _rope(hf: dict[str, Any]) -> tuple[float, dict[str, Any] | None, float, float]:
    """``(rope_theta, rope_scaling or None, local theta, partial_rotary_factor)`` from a config
    of either generation: transformers < 5 (``rope_theta``, ``rope_scaling``,
    ``rope_local_base_freq``) or >= 5 (``rope_parameters``, per layer type for Gemma 3)."""
    rp = hf.get("rope_parameters") or {}
    glob = rp.get(FULL, rp) if isinstance(rp.get(FULL), dict) else rp
    local = rp.get(SLIDING) if isinstance(rp.get(SLIDING), dict) else {}
    theta = hf.get("rope_theta") or glob.get("rope_theta") or 10000.0
    scaling = hf.get("rope_scaling")
    if not scaling and glob.get("rope_type", "default") != "default":
        skip = ("rope_theta", "partial_rotary_factor")
        scaling = {k: v for k, v in glob.items() if k not in skip}
    if scaling and scaling.get("rope_type", scaling.get("type")) == "default":
        scaling = None
    local_theta = hf.get("rope_local_base_freq") or local.get("rope_theta") or 10000.0
    partial = hf.get("partial_rotary_factor") or glob.get("partial_rotary_factor") or 1.0
    return float(theta), scaling, float(local_theta), float(partial)


def _sliding_window(hf: dict[str, Any], mt: str) -> int | None:
    """Qwen2/Qwen3 slide only with use_sliding_window; Mistral, Phi-3 and Gemma whenever
    sliding_window is set (as their transformers attention does)."""
    if mt in ("qwen2", "qwen3") and not hf.get("use_sliding_window"):
        return None
    return hf.get("sliding_window")


def _layer_types(hf: dict[str, Any], mt: str, n: int) -> tuple[str, ...] | None:
    """transformers' ``layer_types``, or its default for configs written before it existed
    (the ``__post_init__`` of each transformers config class)."""
    if hf.get("layer_types") is not None:
        types = tuple(hf["layer_types"])
        if len(types) != n or set(types) - {SLIDING, FULL}:
            raise TypeError(f"layer_types must list {SLIDING!r} / {FULL!r} for {n} layers")
        return types
    if mt in ("qwen2", "qwen3"):
        first = hf.get("max_window_layers", 28)
        return tuple(SLIDING if i >= first else FULL for i in range(n))
    if mt == "gemma2":  # Gemma2Config: every other layer, the first sliding
        return tuple(SLIDING if (i + 1) % 2 else FULL for i in range(n))
    if mt == "gemma3_text":  # Gemma3TextConfig: sliding_window_pattern - 1 sliding, then a global
        pattern = hf.get("sliding_window_pattern") or hf.get("_sliding_window_pattern") or 6
        return tuple(SLIDING if (i + 1) % pattern else FULL for i in range(n))
    return None
