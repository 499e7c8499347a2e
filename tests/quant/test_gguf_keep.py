"""GGUF blocks kept packed (``model.quant=keep``): the jnp block dequantizers equal gguf-py's
numpy reference, and tiny Llama (GQA, permuted q/k rows) / Phi-3 (fused rows split at load) /
GPT-2 (transposed Conv1D) GGUF files
loaded with their blocks kept give the logits of the same files dequantized at load."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lora_jax.models.config import ModelConfig
from lora_jax.models.convert import params_from_hf
from lora_jax.models.load.gguf_file import load_gguf
from lora_jax.models.registry import build_model
from lora_jax.quant import frozen_bytes, gguf_blocks, is_quantized
from tests.models.conftest_gguf import write_gguf

gguf = pytest.importorskip("gguf")
T = gguf.GGMLQuantizationType


def _random_blocks(kind: str, rows: int, cols: int, rng) -> np.ndarray:
    """Random bytes of format ``kind`` with finite fp16 scales where gguf-py cannot quantize."""
    size, nbytes = gguf_blocks.FORMATS[kind]
    b = rng.integers(0, 256, (rows * cols // size, nbytes), dtype=np.uint8)
    f16 = lambda n: (rng.standard_normal((len(b), n)) * 0.01).astype(np.float16).view(np.uint8)
    if kind == "q4_k":
        b[:, :4] = f16(2)  # d, dmin
    else:  # q6_k: d last
        b[:, -2:] = f16(1)
    return b.reshape(rows, -1)


@pytest.mark.parametrize("kind", list(gguf_blocks.FORMATS))
def test_block_dequantizers_equal_gguf_py(kind):
    rng = np.random.default_rng(0)
    rows, cols = 6, 512
    qt = T[kind.upper()]
    if kind in ("q4_k", "q6_k"):  # gguf-py dequantizes but does not quantize K-quants
        blocks = _random_blocks(kind, rows, cols, rng)
    else:
        blocks = gguf.quants.quantize(rng.standard_normal((rows, cols)).astype(np.float32), qt)
    ref = gguf.quants.dequantize(blocks, qt)
    got = jax.jit(gguf_blocks.dequantize, static_argnums=(0, 2))(kind, jnp.asarray(blocks), cols)
    np.testing.assert_allclose(np.asarray(got), ref, rtol=2.4e-7, atol=1e-30)  # ≤ 2 ulp (FMA)


def _llama(rng):
    d, f, h, kv, hd, v = 64, 128, 4, 2, 16, 96
    cfg = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "vocab_size": v,
           "hidden_size": d, "intermediate_size": f, "num_hidden_layers": 2,
           "num_attention_heads": h, "num_key_value_heads": kv, "head_dim": hd,
           "max_position_embeddings": 64, "rms_norm_eps": 1e-5, "rope_theta": 10000.0}  # fmt: skip
    n = lambda *s: (0.1 * rng.standard_normal(s)).astype(np.float32)
    st = {
        "model.embed_tokens.weight": n(v, d),
        "model.norm.weight": 1 + n(d),
        "lm_head.weight": n(v, d),
    }
    for i in range(2):
        p = f"model.layers.{i}."
        for name, shape in (("self_attn.q_proj", (h * hd, d)), ("self_attn.k_proj", (kv * hd, d)),
                            ("self_attn.v_proj", (kv * hd, d)), ("self_attn.o_proj", (d, h * hd)),
                            ("mlp.gate_proj", (f, d)), ("mlp.up_proj", (f, d)), ("mlp.down_proj", (d, f))):  # fmt: skip
            st[p + name + ".weight"] = n(*shape)
        st[p + "input_layernorm.weight"] = 1 + n(d)
        st[p + "post_attention_layernorm.weight"] = 1 + n(d)
    # a different block format per projection; q/k carry llama.cpp's row permutation
    qtypes = {k: q for k, q in (
        (k, {"q_proj": "Q4_0", "k_proj": "Q8_0", "v_proj": "Q4_1", "o_proj": "Q4_0",
             "gate_proj": "Q4_1", "up_proj": "Q8_0", "down_proj": "Q4_1"}.get(k.split(".")[-2], "F32"))
        for k in st)}  # fmt: skip
    return "llama", cfg, st, qtypes


def _phi3(rng):
    """The Llama model above as Phi-3: q/k/v fused into qkv_proj (k, v narrower: GQA) and
    gate/up into gate_up_proj, each fused weight in one block format, RoPE on half of each head."""
    _, cfg, st, _ = _llama(rng)
    cfg = {**cfg, "model_type": "phi3", "architectures": ["Phi3ForCausalLM"],
           "partial_rotary_factor": 0.5}  # fmt: skip
    for i in range(2):
        p = f"model.layers.{i}."
        qkv = [st.pop(f"{p}self_attn.{x}_proj.weight") for x in "qkv"]
        gate_up = [st.pop(f"{p}mlp.{x}_proj.weight") for x in ("gate", "up")]
        st[p + "self_attn.qkv_proj.weight"] = np.concatenate(qkv)
        st[p + "mlp.gate_up_proj.weight"] = np.concatenate(gate_up)
    qtypes = {k: {"qkv_proj": "Q8_0", "o_proj": "Q4_0", "gate_up_proj": "Q4_1",
                  "down_proj": "Q8_0"}.get(k.split(".")[-2], "F32") for k in st}  # fmt: skip
    return "phi3", cfg, st, qtypes


def _gpt2(rng):
    d, v = 64, 96
    cfg = {"model_type": "gpt2", "vocab_size": v, "n_embd": d, "n_layer": 2, "n_head": 4,
           "n_positions": 64, "layer_norm_epsilon": 1e-5}  # fmt: skip
    n = lambda *s: (0.1 * rng.standard_normal(s)).astype(np.float32)
    st = {"transformer.wte.weight": n(v, d), "transformer.wpe.weight": n(64, d),
          "transformer.ln_f.weight": 1 + n(d), "transformer.ln_f.bias": n(d)}  # fmt: skip
    for i in range(2):
        p = f"transformer.h.{i}."
        for name, shape in (("attn.c_attn", (d, 3 * d)), ("attn.c_proj", (d, d)),
                            ("mlp.c_fc", (d, 4 * d)), ("mlp.c_proj", (4 * d, d))):  # fmt: skip
            st[p + name + ".weight"], st[p + name + ".bias"] = n(*shape), n(shape[1])
        for ln in ("ln_1", "ln_2"):
            st[p + ln + ".weight"], st[p + ln + ".bias"] = 1 + n(d), n(d)
    return "gpt2", cfg, st, "Q4_1"


@pytest.mark.parametrize("make", [_llama, _phi3, _gpt2], ids=["llama", "phi3", "gpt2"])
def test_kept_blocks_give_the_dequantized_models_logits(make, tmp_path):
    arch, cfg, state, qtypes = make(np.random.default_rng(1))
    v = cfg["vocab_size"]  # GPT-2 GGUFs state the vocabulary through the token list
    tok = {
        "tokens": [f"t{i}" for i in range(v)],
        "types": [1] * v,
        "merges": ["t 0"],
        "bos": 0,
        "eos": 0,
    }
    path = write_gguf(tmp_path / f"{arch}.gguf", arch, cfg, state, qtypes, tok)
    hf, kept, _ = load_gguf(path, keep_quantized=True)
    _, dense, _ = load_gguf(path)
    mc = ModelConfig.from_hf(hf)
    p_kept, p_dense = params_from_hf(kept, mc), params_from_hf(dense, mc)
    n_proj = 4 if arch == "gpt2" else 7  # Phi-3's fused rows split packed: q, k, v, gate, up
    quantized = [x for x in jax.tree.leaves(p_kept, is_leaf=is_quantized) if is_quantized(x)]
    assert len(quantized) == 2 * n_proj  # every block projection, nothing else
    assert frozen_bytes(p_kept)["bytes"] < 0.6 * frozen_bytes(p_dense)["bytes"]
    module = build_model(mc)
    ids = jnp.asarray(np.random.default_rng(2).integers(0, cfg["vocab_size"], (2, 12)))
    with jax.default_matmul_precision("highest"):
        fwd = jax.jit(lambda p: module.apply({"params": p}, ids)[0])
        got, ref = np.asarray(fwd(p_kept)), np.asarray(fwd(p_dense))
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-5 * np.abs(ref).max())
    # and the dense reference is not the float original (the blocks really are quantized)
    assert not np.allclose(dense[next(iter(k for k in state if "proj" in k or "c_fc" in k))],
                           state[next(iter(k for k in state if "proj" in k or "c_fc" in k))], atol=1e-4)  # fmt: skip
