"""BLEU/NIST against independent implementations (sacrebleu, nltk) and hand-computed values."""

import math
import random

import pytest
import sacrebleu
from nltk.translate.nist_score import corpus_nist as nltk_corpus_nist
from sacrebleu.tokenizers.tokenizer_13a import Tokenizer13a

from lora_jax.metrics.mteval import corpus_bleu, corpus_nist, nist_length_penalty, tokenize_13a

VOCAB = [
    "the",
    "a",
    "cat",
    "dog",
    "sat",
    "on",
    "mat",
    "and",
    "is",
    "in",
    "near",
    "city",
    "centre",
    "cheap",
    "food",
    "pub",
    ",",
    ".",
]


def _random_corpus(seed, n_refs):
    rng = random.Random(seed)
    sent = lambda: " ".join(rng.choices(VOCAB, k=rng.randint(6, 14)))
    hyps = [sent() for _ in range(30)]
    refs = [[sent() for _ in range(n_refs)] for _ in range(30)]
    return hyps, refs


@pytest.mark.parametrize(
    "text",
    [
        "Hello, world. It's 3.5-4 km (ok)!",
        "A&amp;B &quot;x&quot; e-mail 1,000.5 end.",
        "Pub; $5/£3 -- x",
    ],
)
def test_tokenizer_matches_sacrebleu_13a(text):
    assert tokenize_13a(text, lowercase=False) == Tokenizer13a()(text).split()
    assert tokenize_13a(text) == Tokenizer13a()(text.lower()).split()


@pytest.mark.parametrize("n_refs", [1, 3])
def test_bleu_equals_sacrebleu_lowercase_13a(n_refs):
    hyps, refs = _random_corpus(n_refs, n_refs)
    ref_streams = [[group[k] for group in refs] for k in range(n_refs)]
    expected = sacrebleu.corpus_bleu(hyps, ref_streams, lowercase=True, tokenize="13a").score / 100
    assert corpus_bleu(hyps, refs) == pytest.approx(expected, rel=1e-9)


def test_bleu_is_case_insensitive_and_perfect_on_identity():
    assert corpus_bleu(["The Eagle is a Pub ."], [["the eagle is a pub."]]) == pytest.approx(1.0)


def test_bleu_hand_computed():
    # hyp "a b c d e" vs ref "a b c d f g": p1..p4 = 4/5, 3/4, 2/3, 1/2; BP = exp(1 - 6/5).
    expected = math.exp(1 - 6 / 5) * (4 / 5 * 3 / 4 * 2 / 3 * 1 / 2) ** 0.25
    assert corpus_bleu(["a b c d e"], [["a b c d f g"]]) == pytest.approx(expected)


def test_nist_equals_nltk_with_one_reference():
    hyps, refs = _random_corpus(7, 1)
    expected = nltk_corpus_nist(
        [[tokenize_13a(g[0])] for g in refs], [tokenize_13a(h) for h in hyps], n=5
    )
    assert corpus_nist(hyps, refs) == pytest.approx(expected, rel=1e-9)


def test_nist_multi_reference_hand_computed():
    # refs "a b" and "a c": counts a=2, b=1, c=1, total 4 words; ab=1, ac=1.
    # hyp "a b": unigram info a=log2(4/2)=1, b=log2(4/1)=2 -> (1+2)/2 = 1.5;
    # bigram "a b": log2(count(a)/count(ab)) = log2(2) = 1 -> 1/1; no 3..5-grams.
    # avg ref length 2 = hyp length -> no penalty. (nltk picks one best reference per
    # segment instead of clipping against all references, so it is not a reference here.)
    assert corpus_nist(["a b"], [["a b", "a c"]]) == pytest.approx(2.5)


def test_nist_length_penalty_is_half_at_two_thirds():
    assert nist_length_penalty(2, 3) == pytest.approx(0.5)
    assert nist_length_penalty(3, 3) == 1.0


def test_count_mismatch_is_a_clear_error():
    with pytest.raises(ValueError, match="2 hypotheses but 1 reference"):
        corpus_bleu(["a", "b"], [["a"]])


def test_nist_modes_differ_only_in_the_reference_length():
    # 3 references over 2 segments, 7 reference words, hypothesis length 3.
    # pymteval (-p): r = mean(2, 2) + 3 = 5; mteval (Perl): r = 7 / (3 / 2) = 14/3.
    hyps, refs = ["a b", "c"], [["a b", "a c"], ["c d e"]]
    p = corpus_nist(hyps, refs, mode="pymteval")
    m = corpus_nist(hyps, refs, mode="mteval")
    assert m / p == pytest.approx(nist_length_penalty(3, 14 / 3) / nist_length_penalty(3, 5))
    # equal reference counts per segment: the two definitions coincide
    refs2 = [["a b", "a c"], ["c d e", "c"]]
    assert corpus_nist(hyps, refs2, mode="mteval") == pytest.approx(corpus_nist(hyps, refs2))
    with pytest.raises(ValueError, match="unknown NIST mode 'perl'; use one of pymteval, mteval"):
        corpus_nist(hyps, refs, mode="perl")
