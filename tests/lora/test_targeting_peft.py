"""Target lists mean what they mean in PEFT: the same ``target_modules`` / ``exclude_modules``
/ ``layers_to_transform`` values select, in our model, exactly the modules that
``peft.get_peft_model`` injects LoRA into on the same tiny transformers model.

Module names: PEFT's ``base_model.model.model.layers.0.self_attn.q_proj`` (Llama) and
``base_model.model.transformer.h.0.attn.c_attn`` (GPT-2) are our ``layers.0.self_attn.q_proj``
and ``h.0.attn.c_attn`` without the wrapper and model prefixes."""

import jax
import jax.numpy as jnp
import pytest

import lora_jax.lora as L
from lora_jax.models.config import ModelConfig
from lora_jax.models.registry import build_model, lora_modules

pytestmark = pytest.mark.torch

HF = {
    "llama": dict(model_type="llama", vocab_size=64, hidden_size=16, num_hidden_layers=3,
                  num_attention_heads=2, num_key_value_heads=1, intermediate_size=24,
                  max_position_embeddings=32),
    "gpt2": dict(model_type="gpt2", vocab_size=64, n_embd=16, n_layer=3, n_head=2,
                 n_positions=32),
    "gemma3": dict(model_type="gemma3_text", vocab_size=64, hidden_size=16, num_hidden_layers=3,
                   num_attention_heads=2, num_key_value_heads=1, head_dim=8, intermediate_size=24,
                   max_position_embeddings=32, sliding_window=4, sliding_window_pattern=2),
    "gemma2": dict(model_type="gemma2", vocab_size=64, hidden_size=16, num_hidden_layers=2,
                   num_attention_heads=2, num_key_value_heads=1, head_dim=8, intermediate_size=24,
                   max_position_embeddings=32, sliding_window=4),
    "qwen3": dict(model_type="qwen3", vocab_size=64, hidden_size=16, num_hidden_layers=2,
                  num_attention_heads=2, num_key_value_heads=1, head_dim=12, intermediate_size=24,
                  max_position_embeddings=32),
    # fused qkv_proj (k, v narrower than q) and gate_up_proj, kept apart here
    "phi3": dict(model_type="phi3", vocab_size=64, hidden_size=16, num_hidden_layers=3,
                 num_attention_heads=2, num_key_value_heads=1, intermediate_size=24,
                 max_position_embeddings=32, pad_token_id=0),
}  # fmt: skip
ALL_LLAMA = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]

CASES = [
    ("llama", {"target_modules": ["q_proj", "v_proj"]}),
    ("llama", {"target_modules": ["self_attn.q_proj", "mlp.down_proj", "o_proj"]}),
    ("llama", {"target_modules": r".*\.(0|2)\.self_attn\.(k|v)_proj"}),
    ("llama", {"target_modules": ALL_LLAMA, "exclude_modules": ["k_proj", "layers.1.mlp.up_proj"]}),
    ("llama", {"target_modules": ["q_proj", "v_proj"], "exclude_modules": r".*\.1\.self_attn\.q_proj"}),
    ("llama", {"target_modules": ["q_proj", "v_proj"], "layers_to_transform": [0, 2]}),
    ("llama", {"target_modules": ["up_proj"], "layers_to_transform": 1}),
    ("gpt2", {"target_modules": ["c_attn"]}),
    ("gpt2", {"target_modules": ["c_attn", "mlp.c_proj"]}),
    ("gpt2", {"target_modules": ["c_proj"]}),
    ("gpt2", {"target_modules": ["c_fc", "c_proj"], "exclude_modules": ["attn.c_proj"]}),
    ("gpt2", {"target_modules": r".*\.1\.mlp\.c_fc"}),
    ("gpt2", {"target_modules": ["c_attn"], "layers_to_transform": [1]}),
    ("phi3", {"target_modules": ["qkv_proj", "o_proj"]}),
    ("phi3", {"target_modules": ["gate_up_proj", "mlp.down_proj"], "layers_to_transform": [0, 2]}),
    ("phi3", {"target_modules": r".*\.1\.self_attn\.qkv_proj"}),
    ("phi3", {"target_modules": ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"],
              "exclude_modules": ["layers.1.mlp.gate_up_proj"]}),
]  # fmt: skip
OURS = {"target_modules": "targets", "exclude_modules": "exclude_modules",
        "layers_to_transform": "layers"}  # fmt: skip


def _peft_modules(family: str, kw: dict) -> set[str]:
    import warnings

    import peft
    from peft.tuners.lora import LoraLayer
    from transformers import AutoConfig, AutoModelForCausalLM

    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(**HF[family]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # GPT-2 Conv1D: fan_in_fan_out is set for us
        wrapped = peft.get_peft_model(model, peft.LoraConfig(r=2, **kw))
    prefix = "base_model.model." + (
        "transformer." if HF[family]["model_type"] == "gpt2" else "model."
    )
    names = {n for n, m in wrapped.named_modules() if isinstance(m, LoraLayer)}
    assert names and all(n.startswith(prefix) for n in names)
    return {n[len(prefix) :] for n in names}


@pytest.fixture(scope="module")
def params():
    out = {}
    for family, hf in HF.items():
        cfg = ModelConfig.from_hf(hf)
        module = build_model(cfg)
        init = lambda m=module: m.init(jax.random.PRNGKey(0), jnp.zeros((1, 4), jnp.int32))
        out[family] = (
            jax.eval_shape(init)["params"],
            lora_modules(cfg),
        )
    return out


@pytest.mark.parametrize("family, kw", CASES, ids=[f"{f}-{i}" for i, (f, _) in enumerate(CASES)])
def test_same_modules_as_peft_injection(params, family, kw):
    tree, modules = params[family]
    ours = L.resolve(L.LoraConfig(r=2, **{OURS[k]: v for k, v in kw.items()}), tree, modules)
    # Phi-3's q/k/v_proj (gate/up_proj) are PEFT's qkv_proj (gate_up_proj)
    assert {t.fused_id or t.module_id for t in ours} == _peft_modules(family, kw)
    # GPT-2's fused c_attn named as a module: the whole kernel (q, k, v), as PEFT's Conv1D;
    # Phi-3's qkv_proj: its three parts
    for mid in {t.module_id for t in ours if t.module_id.endswith("c_attn")}:
        assert sorted(t.name for t in ours if t.module_id == mid) == ["k", "q", "v"]
    for fid in {t.fused_id for t in ours if t.fused_id and t.fused_id.endswith("qkv_proj")}:
        assert sorted(t.name for t in ours if t.fused_id == fid) == ["k", "q", "v"]


# The presets against PEFT's target_modules for the same modules ("all-linear": PEFT's own
# every-Linear-but-the-head rule).
PRESET_PEFT = {
    "qv": ["q_proj", "v_proj"],
    "attn": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "mlp": ["gate_proj", "up_proj", "down_proj"],
    "all": "all-linear",
}


@pytest.mark.parametrize("family", ["gemma3", "gemma2", "qwen3"])
@pytest.mark.parametrize("preset", list(PRESET_PEFT))
def test_preset_trainable_counts_equal_peft(params, family, preset):
    import warnings

    import peft
    from transformers import AutoConfig, AutoModelForCausalLM

    tree, modules = params[family]
    ours = L.resolve(L.LoraConfig(r=2, targets=preset), tree, modules)
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(**HF[family]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        wrapped = peft.get_peft_model(
            model, peft.LoraConfig(r=2, target_modules=PRESET_PEFT[preset])
        )
    trainable, _ = wrapped.get_nb_trainable_parameters()
    assert sum(t.num_params for t in ours) == trainable
    assert {t.module_id for t in ours} == _peft_modules(
        family, {"target_modules": PRESET_PEFT[preset]}
    )


def test_phi3_fused_parts_keep_their_own_widths(params):
    """q,v on Phi-3: a block on the q rows of qkv_proj (4 heads x 8) and one on the v rows (the
    one KV head, 8 wide), as the original LoRA code's MergedLinear adapts GPT-2's c_attn."""
    tree, modules = params["phi3"]
    ours = L.resolve(L.LoraConfig(r=2, targets="qv"), tree, modules)
    assert {(t.name, t.d_in, t.d_out) for t in ours} == {("q", 16, 16), ("v", 16, 8)}
    assert sum(t.num_params for t in ours) == 3 * 2 * ((16 + 16) + (16 + 8))
    assert {t.fused_id for t in ours} == {f"layers.{i}.self_attn.qkv_proj" for i in range(3)}
