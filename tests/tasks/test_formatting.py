"""Formatting puts the loss only on the target; the decode prefix equals the training prefix."""

import pytest
from tokenizers import Tokenizer as Backend
from tokenizers import decoders, models, pre_tokenizers, trainers

from lora_jax.tasks import get_task
from lora_jax.tasks.base import Example
from lora_jax.tasks.formatting import encode_example, encode_prompt

CHAT = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


class FakeTok:
    """The project tokenizer's API over a tiny trained byte-level BPE."""

    def __init__(self, chat=None):
        backend = Backend(models.BPE())
        backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        backend.decoder = decoders.ByteLevel()
        specials = ["<eos>", "<bos>", "<|user|>", "<|assistant|>", "<|end|>"]
        trainer = trainers.BpeTrainer(
            vocab_size=400,
            special_tokens=specials,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        )
        corpus = ["name[The Eagle], eatType[pub]", " The Eagle is a pub near the river."] * 20
        backend.train_from_iterator(corpus, trainer)
        self.backend = backend
        self.eos_id, self.bos_id = backend.token_to_id("<eos>"), backend.token_to_id("<bos>")
        self.pad_id = self.eos_id
        self.chat = chat

    @property
    def has_chat_template(self):
        return self.chat is not None

    def encode(self, text, add_special_tokens=False):
        return self.backend.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, ids, skip_special_tokens=True):
        return self.backend.decode(ids, skip_special_tokens=skip_special_tokens)

    def apply_chat_template(self, messages, add_generation_prompt=False):
        import jinja2

        return jinja2.Template(self.chat).render(
            messages=messages, add_generation_prompt=add_generation_prompt
        )


EX = Example("name[The Eagle], eatType[pub]", "The Eagle is a pub.", key="k")


def test_plain_format_is_mr_eos_space_text_eos_with_loss_on_completion():
    tok = FakeTok()
    out = encode_example(tok, EX, "plain", max_len=128)
    ids, mask = out["input_ids"], out["loss_mask"]
    n_ctx = len(tok.encode(EX.source)) + 1
    assert ids[: n_ctx - 1] == tok.encode(EX.source) and ids[n_ctx - 1] == tok.eos_id
    assert mask == [0] * n_ctx + [1] * (len(ids) - n_ctx)
    completion = [i for i, m in zip(ids, mask) if m]
    assert completion[-1] == tok.eos_id
    assert tok.decode(completion[:-1]) == " " + EX.target
    assert ids[:n_ctx] == encode_prompt(tok, EX.source, "plain")


def test_chat_format_masks_prompt_and_keeps_end_of_turn():
    tok = FakeTok(chat=CHAT)
    task = get_task("e2e")
    out = encode_example(tok, EX, "chat", max_len=256, task=task)
    ids, mask = out["input_ids"], out["loss_mask"]
    prefix = encode_prompt(tok, EX.source, "chat", task=task)
    assert ids[: len(prefix)] == prefix and not any(mask[: len(prefix)])
    assert all(mask[len(prefix) :])
    completion = tok.decode(ids[len(prefix) :], skip_special_tokens=False)
    assert completion.startswith(EX.target) and "<|end|>" in completion
    assert ids[-1] == tok.eos_id
    assert task.instruction in tok.decode(prefix, skip_special_tokens=False)


def test_truncation_cuts_prompt_from_left_and_errors():
    tok = FakeTok()
    full = encode_example(tok, EX, "plain", max_len=512)
    n_target = sum(full["loss_mask"])
    out = encode_example(tok, EX, "plain", max_len=n_target + 2)
    assert len(out["input_ids"]) == n_target + 2 and sum(out["loss_mask"]) == n_target
    assert out["input_ids"][-n_target:] == full["input_ids"][-n_target:]
    with pytest.raises(ValueError, match="chat template"):
        encode_example(tok, EX, "chat")
    with pytest.raises(ValueError, match="format must be"):
        encode_example(tok, EX, "alpaca")


def _llama_style_folder(out, add_bos_token=None):
    """A tokenizer folder as transformers saves a Llama-family one: the tokenizer.json
    post-processor prepends <s> (optionally also an ``add_bos_token`` flag in the config)."""
    import json

    from tokenizers import processors
    from transformers import PreTrainedTokenizerFast

    backend = FakeTok().backend
    backend.add_special_tokens(["<s>", "</s>"])
    bos = backend.token_to_id("<s>")
    backend.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos)]
    )
    PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>").save_pretrained(out)  # fmt: skip
    if add_bos_token is not None:
        cfg = json.loads((out / "tokenizer_config.json").read_text())
        (out / "tokenizer_config.json").write_text(
            json.dumps({**cfg, "add_bos_token": add_bos_token})
        )
    return out


def _decode_prompts(monkeypatch, tok, add_bos=None):
    """The prompt ids evaluate.decode_items hands to generate (generate itself stubbed)."""
    import lora_jax.eval.evaluate as ev
    from lora_jax.tasks.base import EvalItem

    seen = []
    monkeypatch.setattr(ev, "generate", lambda m, v, prompts, **kw: seen.extend(prompts) or [[] for _ in prompts])  # fmt: skip
    cfg = type("Cfg", (), {"eos_token_id": None})()
    decode = {"max_new_tokens": 4, "num_beams": 1, "length_penalty": 1.0, "no_repeat_ngram_size": 0, "batch_size": 2}  # fmt: skip
    items = [EvalItem(source=EX.source, references=(EX.target,))]
    ev.decode_items(None, {}, cfg, tok, get_task("e2e"), items, "plain", decode, 64, add_bos)
    return seen


@pytest.mark.torch
def test_llama_tokenizer_bos_starts_training_example_and_decode_prompt(tmp_path, monkeypatch):
    from transformers import AutoTokenizer

    from lora_jax.models.tokenizer import Tokenizer

    folder = _llama_style_folder(tmp_path)
    ours, ref = Tokenizer.from_folder(folder, {}), AutoTokenizer.from_pretrained(folder)
    first = ref.encode(EX.source, add_special_tokens=True)[0]
    assert ours.add_bos and first == ref.bos_token_id == ours.bos_id
    train_ids = encode_example(ours, EX, "plain", task=get_task("e2e"))["input_ids"]
    (prompt,) = _decode_prompts(monkeypatch, ours)
    assert train_ids[0] == prompt[0] == first
    assert train_ids[: len(prompt)] == prompt  # decode prefix = training prefix
    # task.add_bos=false overrides the tokenizer, in training and decoding alike
    assert encode_example(ours, EX, "plain", add_bos=False)["input_ids"][0] != first
    assert _decode_prompts(monkeypatch, ours, add_bos=False)[-1][0] != first


@pytest.mark.torch
def test_add_bos_token_flag_in_tokenizer_config_wins(tmp_path):
    from lora_jax.models.tokenizer import Tokenizer

    assert not Tokenizer.from_folder(_llama_style_folder(tmp_path, False), {}).add_bos


def test_gpt2_tokenizer_adds_no_bos(tiny_e2e_gpt2_dir, monkeypatch):
    from transformers import AutoTokenizer

    from lora_jax.models.tokenizer import Tokenizer

    ours, ref = Tokenizer.from_folder(tiny_e2e_gpt2_dir), AutoTokenizer.from_pretrained(tiny_e2e_gpt2_dir)  # fmt: skip
    assert ref.encode(EX.source, add_special_tokens=True) == ref.encode(EX.source, add_special_tokens=False)  # fmt: skip
    assert ours.bos_id is not None and not ours.add_bos  # GPT-2 has <|endoftext|> but adds none
    train_ids = encode_example(ours, EX, "plain")["input_ids"]
    (prompt,) = _decode_prompts(monkeypatch, ours)
    assert train_ids[0] == prompt[0] == ours.encode(EX.source)[0]
    assert _decode_prompts(monkeypatch, ours, add_bos=True)[-1][0] == ours.bos_id  # override


@pytest.mark.parametrize("flag", [True, False])
def test_gguf_add_bos_token_metadata(flag):
    from lora_jax.models.tokenizer import Tokenizer

    meta = {
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.tokens": ["a", "b", "ab", "<s>", "</s>"],
        "tokenizer.ggml.token_type": [1, 1, 1, 3, 3],
        "tokenizer.ggml.merges": ["a b"],
        "tokenizer.ggml.bos_token_id": 3,
        "tokenizer.ggml.eos_token_id": 4,
        "tokenizer.ggml.add_bos_token": flag,
    }
    tok = Tokenizer.from_gguf_metadata(meta)
    assert tok.add_bos is flag
    assert (encode_prompt(tok, "ab")[0] == 3) is flag
    assert (tok.encode("ab", add_special_tokens=True)[0] == 3) is flag
