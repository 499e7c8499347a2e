"""The ``tokenizers`` backends of GGUF tokenizers, rebuilt as transformers rebuilds them
(``integrations/gguf/gguf_tokenizer_mapping.py``): byte-level BPE (``tokenizer.ggml.model =
gpt2``: Llama 3, SmolLM, Qwen2, GPT-2) with the pre-tokenizer split chosen by
``tokenizer.ggml.pre``, and sentencepiece BPE with byte fallback (``llama``: Llama 2, Gemma,
Phi-3). Special and added tokens, BOS/EOS and the chat template are
:class:`lora_jax.models.tokenizer.Tokenizer`'s.
"""

from __future__ import annotations

from typing import Any

from tokenizers import Regex, decoders, models, normalizers, pre_tokenizers
from tokenizers import Tokenizer as Backend

# Pre-tokenizer splits by ``tokenizer.ggml.pre``, as transformers' GGUF_PRE_TOKENIZER_SPLITS;
# anything else gets GPT-2's ByteLevel regex.
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
GGUF_PRE_SPLITS = {
    **dict.fromkeys(
        ("llama3", "llama-v3", "llama-bpe", "falcon3", "smaug-bpe", "dbrx"), _LLAMA3_SPLIT
    ),
    **dict.fromkeys(("qwen2", "deepseek-r1-qwen", "megrez"), _QWEN2_SPLIT),
}


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character table (openai/gpt-2 encoder.py)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    bs += list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def byte_level_backend(
    meta: dict[str, Any], tokens: list[str]
) -> tuple[Backend, dict[str, int], set[str]]:
    """Byte-level BPE (``tokenizer.ggml.model = gpt2``): (backend, vocab, byte alphabet)."""
    spelling = bytes_to_unicode()
    alphabet = set(spelling.values())
    vocab = {
        t if set(t) <= alphabet else "".join(spelling[b] for b in t.encode("utf-8")): i
        for i, t in enumerate(tokens)
    }
    merges = [tuple(m.split(" ")) for m in meta.get("tokenizer.ggml.merges") or []]
    backend = Backend(
        models.BPE(
            vocab=vocab,
            merges=merges,
            continuing_subword_prefix="",
            end_of_word_suffix="",
            fuse_unk=False,
        )
    )
    split = GGUF_PRE_SPLITS.get(meta.get("tokenizer.ggml.pre"))
    if split is None:
        backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    else:
        backend.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(split), behavior="isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
    backend.decoder = decoders.ByteLevel()
    return backend, vocab, alphabet


_GEMMA_ARCHS = ("gemma", "gemma2", "gemma3")


def sentencepiece_backend(meta: dict[str, Any], tokens: list[str]) -> tuple[Backend, dict]:
    """Sentencepiece BPE with byte fallback (``tokenizer.ggml.model = llama``), built as
    transformers builds it from a GGUF (``gguf_tokenizer_mapping.py``): the file's merges, or
    merges recovered from the vocabulary (``generate_merges``) ranked by the token scores, for
    Gemma by the tokens' order (its scores do not follow its merge order) after respelling
    whitespace-only tokens with "▁"; then ``GemmaTokenizer``'s pipeline (spaces -> "▁", no
    prefix space) for Gemma, ``LlamaTokenizer``'s (Metaspace, a prefix space on the first
    word) else, Phi-3's (a normalizer adds the prefix space) for phi3. -> (backend, vocab)."""
    arch = meta.get("general.architecture")
    scores = None
    if arch in _GEMMA_ARCHS:
        tokens = ["\u2581" * len(t) if " " in t and not t.strip() else t for t in tokens]
        scores = {t: -i for i, t in enumerate(tokens)}
    vocab = {t: i for i, t in enumerate(tokens)}
    if meta.get("tokenizer.ggml.merges"):
        merges = [tuple(m.split(" ")) for m in meta["tokenizer.ggml.merges"]]
    else:
        if scores is None:
            scores = dict(zip(tokens, meta["tokenizer.ggml.scores"]))
        merges = generate_merges(vocab, scores)
    unk = "<unk>" if arch in _GEMMA_ARCHS else None  # GemmaTokenizer sets one, Llama's not
    backend = Backend(
        models.BPE(vocab=vocab, merges=merges, fuse_unk=True, unk_token=unk, byte_fallback=True)
    )
    pieces = [decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()]
    if arch in _GEMMA_ARCHS:
        backend.pre_tokenizer = pre_tokenizers.Split(" ", behavior="merged_with_previous")
        backend.normalizer = normalizers.Replace(" ", "\u2581")
    elif arch == "phi3":
        backend.normalizer = normalizers.Sequence(
            [normalizers.Prepend("\u2581"), normalizers.Replace(" ", "\u2581")]
        )
        pieces.append(decoders.Strip(content=" ", left=1))
    else:
        backend.pre_tokenizer = pre_tokenizers.Metaspace(
            replacement="\u2581", prepend_scheme="first", split=False
        )
        pieces.append(decoders.Strip(content=" ", left=1))
    backend.decoder = decoders.Sequence(pieces)
    return backend, vocab


def generate_merges(vocab: dict[str, int], scores: dict[str, float]) -> list[tuple[str, str]]:
    """BPE merges implied by a vocabulary: every split of every token into two tokens, ranked
    by the token's score (best first), then by the pieces' lengths; ties in vocabulary order
    (transformers' ``tokenization_utils_base.generate_merges`` with ``vocab_scores``)."""
    merges = []
    for token, score in scores.items():
        local = [
            (token[:i], token[i:], score)
            for i in range(1, len(token))
            if token[:i] in vocab and token[i:] in vocab
        ]
        local.sort(key=lambda x: (vocab[x[0]], vocab[x[1]]))
        merges.extend(local)
    merges.sort(key=lambda m: (m[2], len(m[0]), len(m[1])), reverse=True)
    return [(left, right) for left, right, _ in merges]
