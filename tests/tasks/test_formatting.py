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
