"""Our Tokenizer against transformers' AutoTokenizer on the same files: save_pretrained folders
(tokenizer.json, vocab.json + merges.txt, BOS post-processors, chat templates) and GGUF metadata
(tiny files per pre-tokenizer, and the real SmolLM2 GGUF, slow)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest_gguf import smollm2_gguf, tokenizer_metadata, write_gguf  # noqa: F401

from lora_jax.models.tokenizer import Tokenizer

pytestmark = pytest.mark.torch

TEXTS = [
    "The Eagle is a coffee shop.",
    "name[The Eagle] eatType[coffee shop]<|endoftext|>food[French]",
    "  héllo wörld — 你好 🤗\n\n\ttabs   and spaces  ",
    "it's 12345 o'clock; don't SHOUT!!",
    "",
]
MESSAGES = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Where is The Eagle? ✓"},
    {"role": "assistant", "content": "By the river."},
    {"role": "user", "content": "Thanks"},
]
TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}"
    "{% if m['role'] not in ['system', 'user', 'assistant'] %}{{ raise_exception('bad role') }}{% endif %}"
    "<|{{ m['role'] }}|>\n{{ m['content'] | trim }}{{ eos_token }}\n"
    "{% endfor %}{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def _assert_same(ours: Tokenizer, ref, texts=TEXTS, add_special_tokens=False) -> None:
    for text in texts:
        ids = ours.encode(text, add_special_tokens=add_special_tokens)
        assert ids == ref.encode(text, add_special_tokens=add_special_tokens), text
        assert ours.decode(ids) == ref.decode(ids, skip_special_tokens=True), text
        assert ours.decode(ids, skip_special_tokens=False) == ref.decode(ids), text


def _save_with_template(src: Path, out: Path, template: str | None) -> Path:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(src)
    tok.chat_template = template
    tok.save_pretrained(out)
    return out


def test_folder_tokenizer_matches_transformers(tiny_gpt2_dir):
    from transformers import AutoTokenizer

    ours, ref = Tokenizer.from_folder(tiny_gpt2_dir), AutoTokenizer.from_pretrained(tiny_gpt2_dir)
    _assert_same(ours, ref)
    assert ours.eos_id == ref.eos_token_id and ours.bos_id == ref.bos_token_id
    assert ours.pad_id == ours.eos_id  # no pad token: falls back to eos
    assert ours.vocab_size == len(ref)
    assert not ours.has_chat_template
    with pytest.raises(ValueError, match="no chat template"):
        ours.apply_chat_template(MESSAGES, add_generation_prompt=True)


@pytest.mark.parametrize("where", ["saved", "tokenizer_config"])
def test_chat_template_matches_transformers(tiny_gpt2_dir, tmp_path, where):
    from transformers import AutoTokenizer

    folder = _save_with_template(tiny_gpt2_dir, tmp_path, TEMPLATE)
    if where == "tokenizer_config":  # older transformers keep the template in this key
        for f in folder.glob("chat_template.*"):
            f.unlink()
        cfg = json.loads((folder / "tokenizer_config.json").read_text())
        cfg["chat_template"] = TEMPLATE
        (folder / "tokenizer_config.json").write_text(json.dumps(cfg))
    ours, ref = Tokenizer.from_folder(folder), AutoTokenizer.from_pretrained(folder)
    assert ours.has_chat_template
    for gen in (False, True):
        got = ours.apply_chat_template(MESSAGES, add_generation_prompt=gen)
        assert got == ref.apply_chat_template(MESSAGES, add_generation_prompt=gen, tokenize=False)
    assert got.startswith("<|endoftext|><|system|>\nBe brief.<|endoftext|>") and got.endswith(
        "<|assistant|>\n"
    )
    import jinja2

    with pytest.raises(jinja2.exceptions.TemplateError, match="bad role"):
        ours.apply_chat_template([{"role": "tool", "content": "x"}])


def test_vocab_and_merges_files_without_tokenizer_json(tiny_gpt2_dir, tmp_path):
    from tokenizers import Tokenizer as Backend

    Backend.from_file(str(tiny_gpt2_dir / "tokenizer.json")).model.save(str(tmp_path))
    assert (tmp_path / "vocab.json").is_file() and (tmp_path / "merges.txt").is_file()
    (tmp_path / "config.json").write_text(json.dumps({"eos_token_id": 0, "bos_token_id": 0}))
    ours, full = Tokenizer.from_folder(tmp_path), Tokenizer.from_folder(tiny_gpt2_dir)
    for text in TEXTS:
        assert ours.encode(text) == full.encode(text)
    assert ours.eos_id == 0


def test_bos_post_processor_and_special_ids(tiny_gpt2_dir, tmp_path):
    """A Llama-style tokenizer.json whose post-processor prepends <s>, with a distinct pad."""
    from tokenizers import AddedToken, processors
    from tokenizers import Tokenizer as Backend
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    backend = Backend.from_file(str(tiny_gpt2_dir / "tokenizer.json"))
    backend.add_special_tokens([AddedToken(t, special=True) for t in ("<s>", "</s>", "<pad>")])
    bos = backend.token_to_id("<s>")
    backend.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos)]
    )
    PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    ).save_pretrained(tmp_path)
    ours, ref = Tokenizer.from_folder(tmp_path), AutoTokenizer.from_pretrained(tmp_path)
    _assert_same(ours, ref, add_special_tokens=True)
    assert ours.encode("The Eagle", add_special_tokens=True)[0] == bos
    assert ours.encode("The Eagle")[0] != bos
    assert ours.add_bos  # the prompt formats follow it (tests/tasks/test_formatting.py)
    assert (ours.bos_id, ours.eos_id, ours.pad_id) == (
        ref.bos_token_id,
        ref.eos_token_id,
        ref.pad_token_id,
    )


DIGITS = "3456 1234"
SPLITS = {  # pieces by hand from each split regex, then the three extra merges
    "gpt2": ["34", "5", "6", "Ġ12", "34"],  # "3456" | " 1234"
    "smollm": ["34", "5", "6", "Ġ12", "34"],  # not in transformers' table: GPT-2's regex
    "llama-bpe": ["34", "5", "6", "Ġ", "1", "2", "3", "4"],  # "345" "6" " " "123" "4"
    "qwen2": ["3", "4", "5", "6", "Ġ", "1", "2", "3", "4"],  # single digits
}


@pytest.mark.parametrize("pre", ["gpt2", "llama-bpe", "qwen2", "smollm"])
def test_gguf_tokenizer_matches_transformers(make_tiny_hf_model, tmp_path, pre):
    from transformers import AutoTokenizer

    folder = make_tiny_hf_model("llama_tied", vocab_size=299)
    cfg = json.loads((folder / "config.json").read_text())
    tok = tokenizer_metadata(folder)
    # merges across digit / space boundaries, so each pre-tokenizer split gives other ids
    tok["tokens"] += ["Ġ1", "Ġ12", "34"]
    tok["types"] += [1, 1, 1]
    tok["merges"] += ["Ġ 1", "Ġ1 2", "3 4"]
    assert len(tok["tokens"]) == cfg["vocab_size"]
    tok.update(bos=0, eos=0, pad=0, pre=pre, chat_template=TEMPLATE)
    state = {"model.embed_tokens.weight": np.zeros((299, 32), np.float32)}
    path = write_gguf(tmp_path / f"{pre}.gguf", "llama", cfg, state, "F32", tok)
    ours = Tokenizer.from_gguf(path)
    ref = AutoTokenizer.from_pretrained(tmp_path, gguf_file=path.name)
    _assert_same(ours, ref, TEXTS + [DIGITS, "abc123456789 x\r\n\n  y"])
    assert ours.encode(DIGITS) == [ours.token_to_id(t) for t in SPLITS[pre]]
    assert ours.vocab_size == len(ref) == 299
    assert (ours.bos_id, ours.eos_id, ours.pad_id) == (0, 0, 0)
    for gen in (False, True):
        got = ours.apply_chat_template(MESSAGES, add_generation_prompt=gen)
        assert got == ref.apply_chat_template(MESSAGES, add_generation_prompt=gen, tokenize=False)


def test_gguf_without_template_and_unsupported_kind(tmp_path):
    meta = {
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.tokens": ["a", "b", "ab", "<eos>"],
        "tokenizer.ggml.token_type": [1, 1, 1, 3],
        "tokenizer.ggml.merges": ["a b"],
        "tokenizer.ggml.eos_token_id": 3,
        "tokenizer.ggml.bos_token_id": 3,
        "tokenizer.ggml.add_bos_token": True,
    }
    tok = Tokenizer.from_gguf_metadata(meta)
    assert tok.encode("abab<eos>") == [2, 2, 3]
    assert tok.encode("ab", add_special_tokens=True) == [3, 2]
    assert not tok.has_chat_template
    with pytest.raises(NotImplementedError, match="'t5'.*sentencepiece 'llama'"):
        Tokenizer.from_gguf_metadata({**meta, "tokenizer.ggml.model": "t5"})


def _spm_gguf(path, arch: str):
    """A tiny sentencepiece-BPE GGUF (``tokenizer.ggml.model = llama``, no merges: recovered
    from the scores, or for Gemma from the token order), tokenizer metadata only."""
    import gguf

    specials = ["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>"]
    pieces = ["\u2581", "\u2581t", "he", "\u2581the", "\u2581c", "at", "\u2581cat", "s", "  ",
              "\n", "\u2581a", "\u2581is", "i", "t", "e", "h", "c", "a"]  # fmt: skip
    tokens = specials + [f"<0x{b:02X}>" for b in range(256)] + pieces
    types = [3] * len(specials) + [6] * 256 + [4 if p in ("  ", "\n") else 1 for p in pieces]
    scores = [0.0] * (len(specials) + 256) + [-float(i) for i in range(len(pieces))]
    w = gguf.GGUFWriter(str(path), arch)
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_scores(scores)
    w.add_bos_token_id(2)
    w.add_eos_token_id(1)
    w.add_unk_token_id(3)
    w.add_pad_token_id(0)
    w.add_add_bos_token(True)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.mark.torch
@pytest.mark.parametrize("arch", ["gemma3", "llama", "phi3"])
def test_sentencepiece_gguf_tokens_equal_transformers(arch, tmp_path):
    from transformers import AutoTokenizer

    path = _spm_gguf(tmp_path / f"{arch}.gguf", arch)
    ours = Tokenizer.from_gguf(path)
    ref = AutoTokenizer.from_pretrained(tmp_path, gguf_file=path.name)
    texts = ["the cat is a cat", " the  cats\n\nhe", "theé 🤗 x", "<start_of_turn>the", ""]
    for text in texts:
        ids = ours.encode(text, add_special_tokens=True)
        assert ids == ref.encode(text), (arch, text)
        assert ours.decode(ids, skip_special_tokens=False) == ref.decode(ids), (arch, text)
    assert len(ours.encode("the cat")) < len("the cat")  # the recovered merges apply


@pytest.mark.slow
def test_smollm2_gguf_tokenizer_matches_transformers(smollm2_gguf):  # noqa: F811
    from transformers import AutoTokenizer

    ours = Tokenizer.from_gguf(smollm2_gguf)
    ref = AutoTokenizer.from_pretrained(smollm2_gguf.parent, gguf_file=smollm2_gguf.name)
    chats = [
        ours.apply_chat_template(MESSAGES[1:2], add_generation_prompt=True),
        ours.apply_chat_template(MESSAGES, add_generation_prompt=False),
    ]
    for msgs, gen, text in [(MESSAGES[1:2], True, chats[0]), (MESSAGES, False, chats[1])]:
        assert text == ref.apply_chat_template(msgs, add_generation_prompt=gen, tokenize=False)
    assert "<|im_start|>assistant\n" in chats[0]
    code = "def f(x):\n    return x ** 2  # squares\n\n\nprint(f(12345678))"
    _assert_same(ours, ref, TEXTS + chats + [code, "Ünïcödé ΑΒΓ привет こんにちは 🚀🚀"])
    _assert_same(ours, ref, TEXTS[:2], add_special_tokens=True)
    # SmolLM2's tokenizer adds no BOS (GGUF add_bos_token false), as transformers' does not
    assert ours.add_bos is (ref.encode("x", add_special_tokens=True)[0] == ref.bos_token_id)
    assert (ours.eos_id, ours.bos_id, ours.pad_id, ours.vocab_size) == (
        ref.eos_token_id,
        ref.bos_token_id,
        ref.pad_token_id,
        len(ref),
    )
