"""End to end on a real pretrained Gemma 3: Gemma 3 270M (base, Q4_K_M GGUF: Q5_0, Q8_0, Q4_K,
Q6_K and F32 tensors) loaded by lora-jax (load_checkpoint -> convert -> Flax Gemma) against
transformers loading the same GGUF, fp32: the sentencepiece tokens, every dequantized tensor,
the logits on several prompts (one longer than the 512-token sliding window) and greedy
decoding with the KV cache against ``generate``."""

from __future__ import annotations

import numpy as np
import pytest
from conftest_gguf import gemma3_gguf  # noqa: F401

pytestmark = [pytest.mark.slow, pytest.mark.torch]

TEXTS = [
    "The capital of France is",
    "def fibonacci(n):\n    if n < 2:\n        return n",
    "  two leading spaces, tabs\tand\r\n a CRLF",
    "Ünïcödé, 日本語のテキスト and émojis 🤗 are",
    "<start_of_turn>user\nName a colour.<end_of_turn>\n<start_of_turn>model\n",
    "[multimodal] <unused0> <bos> inside",
]


@pytest.fixture(scope="module")
def both(gemma3_gguf):  # noqa: F811
    import torch
    from transformers import AutoModelForCausalLM

    from lora_jax.models.pretrained import load_model

    ours = load_model(str(gemma3_gguf), dtype="float32", param_dtype="float32")
    ref = AutoModelForCausalLM.from_pretrained(
        gemma3_gguf.parent,
        gguf_file=gemma3_gguf.name,
        dtype=torch.float32,
        attn_implementation="eager",
    ).eval()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # see test_smollm2: contention on a shared CI box
    yield ours, ref
    torch.set_num_threads(threads)


def test_config_is_gemma3_270m(both):
    ours, ref = both
    cfg = ours.config
    assert (cfg.model_type, cfg.num_layers, cfg.hidden_size, cfg.head_dim) == (
        "gemma3_text", 18, 640, 256)  # fmt: skip
    assert cfg.layer_types == tuple(ref.config.layer_types)
    assert cfg.layer_types.count("full_attention") == 3  # layers 5, 11, 17
    assert cfg.sliding_window == ref.config.sliding_window == 512
    assert cfg.query_pre_attn_scalar == ref.config.query_pre_attn_scalar
    assert cfg.rope_local_theta == ref.config.rope_parameters["sliding_attention"]["rope_theta"]
    assert cfg.rope_theta == ref.config.rope_parameters["full_attention"]["rope_theta"]
    assert cfg.final_logit_softcapping is None and ref.config.final_logit_softcapping is None


def test_tokens_equal_transformers(both, gemma3_gguf):  # noqa: F811
    from transformers import AutoTokenizer

    tok = both[0].tokenizer
    ref = AutoTokenizer.from_pretrained(gemma3_gguf.parent, gguf_file=gemma3_gguf.name)
    assert tok.add_bos and tok.bos_id == ref.bos_token_id == 2 and tok.eos_id == 1
    for text in TEXTS:
        ids = tok.encode(text, add_special_tokens=True)
        assert ids == ref.encode(text), text
        assert tok.decode(ids, skip_special_tokens=False) == ref.decode(ids), text


def test_every_tensor_equals_transformers_dequantized(both, gemma3_gguf):  # noqa: F811
    """Our dequantized (and norm-shifted) tensors equal transformers'; for every block type the
    file uses, lora-jax's on-the-fly dequantizer (model.quant=keep) equals gguf-py's."""
    import gguf
    import jax
    from flax import traverse_util

    from lora_jax.models.convert import hf_name
    from lora_jax.quant import gguf_blocks

    ours, ref = both
    sd = ref.state_dict()
    flat = traverse_util.flatten_dict(ours.params)
    assert len(flat) == len([k for k in sd if k != "lm_head.weight"])  # tied head
    for path, value in flat.items():
        name, transposed = hf_name(path, ours.config)
        want = sd[name].numpy()
        got = np.asarray(value).T if transposed else np.asarray(value)
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-6 * np.abs(want).max(), err_msg=name)

    reader = gguf.GGUFReader(str(gemma3_gguf))
    kinds: dict[str, object] = {}  # the smallest tensor of each type
    for t in sorted(reader.tensors, key=lambda t: int(t.n_elements)):
        kinds.setdefault(t.tensor_type.name, t)
    assert {"Q5_0", "Q8_0", "Q4_K", "Q6_K", "F32"} <= set(kinds)
    for kind, t in kinds.items():
        if kind == "F32":
            continue
        rows, cols = int(t.shape[1]), int(t.shape[0])
        blocks = np.asarray(t.data, np.uint8).reshape(rows, -1)
        got = jax.jit(gguf_blocks.dequantize, static_argnums=(0, 2))(kind.lower(), blocks, cols)
        want = gguf.quants.dequantize(t.data, t.tensor_type).reshape(rows, cols)
        np.testing.assert_allclose(np.asarray(got), want, rtol=2.4e-7, atol=1e-30, err_msg=kind)


def _ref_logits(ref, ids: list[int]) -> np.ndarray:
    import torch

    with torch.no_grad():
        return ref(torch.tensor([ids])).logits[0].numpy()


def _long_text(n_words: int = 700) -> str:
    """Varied words (a repeated sentence makes fp32 rounding differences between the two
    implementations grow to 1e-4 relative around positions 300-500, in both directions)."""
    rng = np.random.default_rng(0)
    words = ["the", "of", "and", "to", "in", "is", "was", "for", "on", "that", "with", "as", "by", "at", "from", "his", "her", "it", "an", "were", "are", "which", "this", "be", "or", "has", "had", "not", "but", "also", "river", "city", "song", "winter"]  # fmt: skip
    return " ".join(rng.choice(words) + rng.choice(["", ",", "."]) for _ in range(n_words))


def test_logits_match_transformers(both):
    """Each prompt alone (one compile per length), the last one 600 tokens: past the sliding
    window of 512, where the five-in-six sliding layers differ from global attention (checked:
    without the window the logits there move by more than 1). Measured max |diff| 6e-5 with
    |logits| up to 25; tolerance 1e-5 of the largest reference logit."""
    import jax

    from lora_jax.models.registry import build_model

    ours, ref = both
    tok = ours.tokenizer
    rows = [tok.encode(t, add_special_tokens=True) for t in TEXTS[:2]]
    rows.append(tok.encode(_long_text(), add_special_tokens=True)[:600])
    assert len(rows[-1]) == 600
    fn = jax.jit(lambda params, ids: ours.module.apply({"params": params}, ids)[0])
    for ids in rows:
        got = np.asarray(fn(ours.params, np.asarray([ids], np.int32)))[0]
        want = _ref_logits(ref, ids)
        scale = float(np.abs(want).max())
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * scale, err_msg=str(len(ids)))
    global_only = build_model(ours.config.replace(sliding_window=None))
    wide = jax.jit(lambda params, ids: global_only.apply({"params": params}, ids)[0])(
        ours.params, np.asarray([rows[-1]], np.int32)
    )[0]
    assert float(np.abs(np.asarray(wide) - want)[512:].max()) > 1.0


def test_greedy_with_kv_cache_matches_generate(both):
    import torch

    from lora_jax.eval.decoding import generate

    ours, ref = both
    tok = ours.tokenizer
    prompts = [tok.encode(t, add_special_tokens=True) for t in TEXTS[:2]]
    got = generate(ours.module, {"params": ours.params}, prompts, cfg=ours.config,
                   eos_token_id=tok.eos_id, pad_token_id=tok.pad_id, max_new_tokens=12,
                   batch_size=2, num_beams=1)  # fmt: skip
    for p, g in zip(prompts, got):
        with torch.no_grad():
            out = ref.generate(torch.tensor([p]), attention_mask=torch.ones(1, len(p), dtype=torch.long),
                               max_new_tokens=12, do_sample=False, eos_token_id=tok.eos_id,
                               pad_token_id=tok.pad_id)[0, len(p):].tolist()  # fmt: skip
        out = out[: next((i for i, t in enumerate(out) if t == tok.eos_id), len(out))]
        assert g == out
