"""End to end on a real pretrained model: SmolLM2-135M-Instruct (Q4_1 GGUF) loaded by lora-jax
(load_checkpoint -> convert -> Flax Llama) against transformers loading the same GGUF, fp32:
logits on several prompts (right-padded, and left-padded with an attention mask), and 20
greedy tokens by full recomputation."""

from __future__ import annotations

import numpy as np
import pytest
from conftest_gguf import smollm2_gguf  # noqa: F401

pytestmark = [pytest.mark.slow, pytest.mark.torch]

PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):\n    ",
    "Once upon a time, in a land far away, there lived a",
    "Ünïcödé and émojis 🤗 are",
]
N_NEW = 20


@pytest.fixture(scope="module")
def both(smollm2_gguf):  # noqa: F811
    import torch
    from transformers import AutoModelForCausalLM

    from lora_jax.models.pretrained import load_model

    ours = load_model(str(smollm2_gguf), dtype="float32", param_dtype="float32")
    ref = AutoModelForCausalLM.from_pretrained(
        smollm2_gguf.parent,
        gguf_file=smollm2_gguf.name,
        dtype=torch.float32,
        attn_implementation="eager",
    ).eval()
    # One torch thread: on a shared 2-core CI box, torch's thread pool under contention made
    # each forward 10x slower than single-threaded (measured 4.5 s vs 0.4 s).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield ours, ref
    torch.set_num_threads(threads)


def _ref_logits(ref, ids: list[int]) -> np.ndarray:
    import torch

    with torch.no_grad():
        return ref(torch.tensor([ids])).logits[0].numpy()


def _forward(ours):
    """Jitted fp32 forward; params passed as an argument (not baked in as constants)."""
    import jax

    fn = jax.jit(lambda params, ids: ours.module.apply({"params": params}, ids)[0])
    return lambda ids: np.asarray(fn(ours.params, ids))


def _right_padded(rows: list[list[int]], length: int, pad: int) -> np.ndarray:
    """Causal attention: logits at position t ignore everything after t, so right padding needs
    no mask and one fixed shape (one compilation) serves every prompt and step."""
    buf = np.full((len(rows), length), pad, np.int32)
    for i, r in enumerate(rows):
        buf[i, : len(r)] = r
    return buf


def test_logits_match_transformers(both):
    ours, ref = both
    tok = ours.tokenizer
    chat = tok.apply_chat_template(
        [{"role": "user", "content": "Name a colour."}], add_generation_prompt=True
    )
    texts = [*PROMPTS, chat]
    rows = [tok.encode(t) for t in texts]
    logits = _forward(ours)(_right_padded(rows, max(map(len, rows)), tok.pad_id))
    for text, ids, got in zip(texts, rows, logits):
        expected = _ref_logits(ref, ids)
        np.testing.assert_allclose(got[: len(ids)], expected, rtol=0, atol=1e-3, err_msg=text)


def test_left_padded_batch_with_a_mask_matches_transformers(both):
    """A left-padded batch with its attention mask (lora-jax compacts each row to key lengths;
    transformers takes the mask and explicit position ids): equal logits on the real tokens."""
    import jax
    import torch

    ours, ref = both
    tok = ours.tokenizer
    rows = [tok.encode(t) for t in ["The capital of France is", "Hi"]]
    width = max(map(len, rows))
    ids, mask = np.zeros((2, width), np.int32), np.zeros((2, width), np.int32)
    for i, r in enumerate(rows):
        ids[i, width - len(r) :], mask[i, width - len(r) :] = r, 1
    positions = np.maximum(np.cumsum(mask, axis=1) - 1, 0)
    logits, _ = jax.jit(ours.module.apply)({"params": ours.params}, ids, mask)
    with torch.no_grad():
        want = ref(
            input_ids=torch.tensor(ids, dtype=torch.long),
            attention_mask=torch.tensor(mask),
            position_ids=torch.tensor(positions, dtype=torch.long),
        ).logits.numpy()
    real = mask.astype(bool)
    # measured 1.3e-4 (|logits| <= 27)
    np.testing.assert_allclose(np.asarray(logits)[real], want[real], atol=1e-3, rtol=0)
    assert np.argmax(np.asarray(logits)[0, -1]) == np.argmax(want[0, -1])


def test_greedy_continuation_matches_transformers(both):
    ours, ref = both
    tok = ours.tokenizer
    prompts = [tok.encode(p) for p in PROMPTS[:2]]
    length = max(map(len, prompts)) + N_NEW
    forward = _forward(ours)

    def ref_forward(buf: np.ndarray) -> np.ndarray:
        import torch

        with torch.no_grad():
            return ref(torch.from_numpy(buf).long()).logits.numpy()

    results = []
    for fwd in (forward, ref_forward):  # both prompts as one batch, full recomputation each step
        rows = [list(p) for p in prompts]
        for _ in range(N_NEW):
            logits = fwd(_right_padded(rows, length, tok.pad_id))
            for row, lg in zip(rows, logits):
                row.append(int(lg[len(row) - 1].argmax()))
        results.append(rows)
    for prompt, got, expected in zip(prompts, *results):
        assert got == expected, (tok.decode(got), tok.decode(expected))
        assert len(set(got[len(prompt) :])) > 1  # a real continuation, not one repeated token
