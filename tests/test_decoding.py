"""Decoding tests.

References: (1) a plain-Python greedy loop that recomputes the whole sequence every step with
no cache and no padding, n-grams banned with HF's own ``_get_ngrams`` dictionary method;
(2) ``transformers``' ``generate`` driving a torch shell whose forward is the same Flax toy
model recomputed without cache, so HF's beam bookkeeping is the reference for ours;
(3) real tiny GPT-2 / Llama checkpoints (when ``lora_jax.models.registry`` exists).
"""

from __future__ import annotations

import dataclasses
import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lora_jax.eval.decoding import _ban_ngrams, _bucket, generate

# ---------------------------------------------------------------- a toy model with the contract


@dataclasses.dataclass(frozen=True)
class ToyConfig:
    vocab_size: int = 29
    dim: int = 16
    max_position_embeddings: int = 128


class ToyLM(nn.Module):
    """One attention block + MLP; cache = {k, v: [B, L, D], mask: [B, L], index: []}."""

    cfg: ToyConfig
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, ids, attention_mask=None, positions=None, cache=None, deterministic=True):
        c = self.cfg
        b, t = ids.shape
        mask = jnp.ones((b, t), jnp.int32) if attention_mask is None else attention_mask
        offset = 0 if cache is None else cache["index"]
        if positions is None:
            positions = jnp.maximum(jnp.cumsum(mask, 1) - 1, 0) + offset
        x = nn.Embed(c.vocab_size, c.dim)(ids) + nn.Embed(c.max_position_embeddings, c.dim)(
            positions
        )
        q, k, v = (nn.Dense(c.dim, name=n)(x) for n in "qkv")
        if cache is None:
            kk, vv, kmask, new_cache = k, v, mask, None
        else:
            kk = jax.lax.dynamic_update_slice(
                cache["k"], k.astype(cache["k"].dtype), (0, offset, 0)
            )
            vv = jax.lax.dynamic_update_slice(
                cache["v"], v.astype(cache["v"].dtype), (0, offset, 0)
            )
            kmask = jax.lax.dynamic_update_slice(cache["mask"], mask, (0, offset))
            new_cache = {"k": kk, "v": vv, "mask": kmask, "index": offset + t}
        qslot = offset + jnp.arange(t)
        kslot = jnp.arange(kk.shape[1])
        allowed = (kmask[:, None, :] > 0) & (kslot[None, None] <= qslot[None, :, None])
        allowed = allowed | (
            kslot[None, None] == qslot[None, :, None]
        )  # pad queries see themselves
        att = jnp.einsum("btd,bsd->bts", q, kk) / math.sqrt(c.dim)
        att = jax.nn.softmax(jnp.where(allowed, att, -1e9), axis=-1)
        h = x + jnp.einsum("bts,bsd->btd", att, vv)
        h = h + nn.Dense(c.dim)(nn.gelu(nn.Dense(2 * c.dim)(h)))
        return nn.Dense(c.vocab_size)(h) * 4.0, new_cache


def toy_init_cache(cfg: ToyConfig, batch: int, max_len: int, dtype=jnp.float32):
    z = jnp.zeros((batch, max_len, cfg.dim), dtype)
    return {"k": z, "v": z, "mask": jnp.zeros((batch, max_len), jnp.int32), "index": jnp.int32(0)}


@pytest.fixture(scope="module")
def toy():
    cfg = ToyConfig()
    module = ToyLM(cfg)
    variables = module.init(jax.random.PRNGKey(0), jnp.zeros((1, 4), jnp.int32))
    return cfg, module, variables


FIXED = 32  # every recomputation is right-padded to this length: one compile, same logits


@functools.lru_cache(maxsize=8)
def _jit_apply(module, variables_id):
    return jax.jit(lambda v, ids: module.apply(v, ids)[0])


def full_logits_batch(module, variables, seqs: np.ndarray) -> np.ndarray:
    """Logits [N, L, V] of whole unpadded sequences [N, L] recomputed without cache (causal, so
    right padding to FIXED tokens leaves the first L positions unchanged)."""
    n, length = seqs.shape
    assert length <= FIXED
    ids = np.zeros((n, FIXED), np.int32)
    ids[:, :length] = seqs
    logits = _jit_apply(module, id(variables))(variables, jnp.asarray(ids))
    return np.asarray(logits[:, :length], np.float64)


def full_logits(module, variables, seq: list[int]) -> np.ndarray:
    """Last-position logits [V] from recomputing the whole (unpadded) sequence, no cache."""
    return full_logits_batch(module, variables, np.asarray([seq]))[0, -1]


def hf_banned(seq: list[int], n: int) -> set[int]:
    """Banned next tokens, with transformers' dictionary implementation (_get_ngrams)."""
    from_hf = pytest.importorskip("transformers.generation.logits_process")
    import torch

    if len(seq) + 1 < n or n == 0:
        return set()
    t = torch.tensor([seq])
    ngrams = from_hf._get_ngrams(n, t, 1)
    return set(from_hf._get_generated_ngrams(ngrams[0], t[0], n, len(seq)))


def naive_greedy(module, variables, prompt, max_new, eos, ngram=0):
    seq, out = list(prompt), []
    for _ in range(max_new):
        logits = full_logits(module, variables, seq)
        for tok in ngram_banned_plain(seq, ngram):
            logits[tok] = -np.inf
        tok = int(np.argmax(logits))
        if tok in eos:
            break
        seq.append(tok)
        out.append(tok)
    return out


def ngram_banned_plain(seq: list[int], n: int) -> set[int]:
    """Every token x such that seq[-(n-1):] + [x] already occurs as an n-gram of seq."""
    if n == 0 or len(seq) < n:
        return set()
    prefix = tuple(seq[len(seq) - n + 1 :])
    return {seq[i + n - 1] for i in range(len(seq) - n + 1) if tuple(seq[i : i + n - 1]) == prefix}


PROMPTS = [[3, 7, 1], [5], [2, 2, 9, 11, 4, 8, 1, 0, 6, 13, 3], [17, 4], [1, 2, 3, 4, 5, 6, 7]]


# ---------------------------------------------------------------- unit pieces


def test_bucket_rounds_up_to_powers_of_two():
    assert [_bucket(n, 64) for n in (1, 2, 3, 5, 8, 9, 33)] == [1, 2, 4, 8, 8, 16, 64]
    assert _bucket(3, 64, low=8) == 8
    assert _bucket(40, 48) == 48  # capped
    assert _bucket(50, 48) == 50  # never below n


def test_ban_ngrams_matches_plain_python_definition():
    rng = np.random.default_rng(0)
    v, s = 5, 20
    for _ in range(30):
        n = int(rng.integers(1, 5))
        start, cur = int(rng.integers(0, 6)), int(rng.integers(8, s + 1))
        hist = rng.integers(0, v, size=(1, s)).astype(np.int32)
        got = _ban_ngrams(jnp.zeros((1, v)), jnp.asarray(hist), jnp.asarray([start]), cur, n)
        banned = {int(i) for i in np.nonzero(np.isinf(np.asarray(got[0])))[0]}
        assert banned == ngram_banned_plain(hist[0, start:cur].tolist(), n)


@pytest.mark.torch
def test_plain_ngram_definition_matches_transformers():
    rng = np.random.default_rng(1)
    for _ in range(30):
        n = int(rng.integers(2, 5))
        seq = rng.integers(0, 4, size=int(rng.integers(1, 15))).tolist()
        assert ngram_banned_plain(seq, n) == hf_banned(seq, n)


def test_bad_arguments_have_clear_errors(toy):
    cfg, module, variables = toy
    kw = dict(cfg=cfg, eos_token_id=1, pad_token_id=0, init_cache=toy_init_cache)
    with pytest.raises(ValueError, match="at least one token"):
        generate(module, variables, [[1], []], **kw)
    with pytest.raises(ValueError, match="early_stopping"):
        generate(module, variables, [[1]], early_stopping="sometimes", **kw)
    with pytest.raises(ValueError, match="eos_token_id"):
        generate(module, variables, [[1]], **{**kw, "eos_token_id": []})
    with pytest.raises(ValueError, match="num_beams"):
        generate(module, variables, [[1]], num_beams=0, **kw)


# ---------------------------------------------------------------- greedy: cache vs recomputation


def test_greedy_with_cache_equals_recomputation(toy):
    cfg, module, variables = toy
    eos = [28, 13]
    outs = {}
    for ngram in (0, 2):
        want = [naive_greedy(module, variables, p, 12, eos, ngram) for p in PROMPTS]
        got = generate(module, variables, PROMPTS, cfg=cfg, max_new_tokens=12, eos_token_id=eos,
                       pad_token_id=0, no_repeat_ngram_size=ngram, batch_size=4,
                       init_cache=toy_init_cache)  # fmt: skip
        assert got == want
        assert any(len(w) < 12 for w in want), "eos should end some prompts early"
        assert any(len(w) == 12 for w in want), "some rows should run to the limit"
        outs[ngram] = want
    assert outs[0] != outs[2], "the 2-gram ban should change some output"


def test_results_do_not_depend_on_batching(toy):
    cfg, module, variables = toy
    kw = dict(
        cfg=cfg,
        max_new_tokens=10,
        eos_token_id=28,
        pad_token_id=0,
        num_beams=3,
        no_repeat_ngram_size=3,
        init_cache=toy_init_cache,
    )
    one = generate(module, variables, PROMPTS, batch_size=2, **kw)
    assert generate(module, variables, PROMPTS, batch_size=8, max_prompt_len=16, **kw) == one


def test_max_prompt_len_keeps_the_last_tokens(toy):
    cfg, module, variables = toy
    kw = dict(cfg=cfg, max_new_tokens=5, eos_token_id=6, pad_token_id=0, init_cache=toy_init_cache)
    long = PROMPTS[2]
    assert generate(module, variables, [long], max_prompt_len=4, **kw) == generate(
        module, variables, [long[-4:]], **kw
    )


# ---------------------------------------------------------------- transformers as the reference


def hf_shell(module, variables, vocab: int):
    """A transformers causal LM whose forward recomputes the Flax toy on the whole sequence."""
    torch = pytest.importorskip("torch")
    tf = pytest.importorskip("transformers")
    from transformers.modeling_outputs import CausalLMOutput

    class ShellConfig(tf.PretrainedConfig):
        model_type = "lora_jax_toy_shell"

    class Shell(tf.PreTrainedModel, tf.GenerationMixin):
        config_class = ShellConfig

        def __init__(self, config):
            super().__init__(config)
            self.dummy = torch.nn.Parameter(torch.zeros(1))
            self.post_init()

        def forward(self, input_ids, attention_mask=None, **kw):
            assert attention_mask is None or bool(attention_mask.all()), "unpadded prompts only"
            logits = full_logits_batch(module, variables, input_ids.numpy())
            return CausalLMOutput(logits=torch.from_numpy(logits.astype(np.float32)))

    return Shell(ShellConfig(vocab_size=vocab, is_decoder=True)).eval()


def hf_generate(shell, prompt, eos, **kw) -> list[int]:
    import torch

    out = shell.generate(
        torch.tensor([prompt]),
        attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
        eos_token_id=eos,
        pad_token_id=0,
        do_sample=False,
        use_cache=False,
        **kw,
    )[0, len(prompt) :].tolist()
    eos = [eos] if isinstance(eos, int) else eos
    cut = next((i for i, t in enumerate(out) if t in eos), len(out))
    return out[:cut]


BEAM_CASES = [  # num_beams, length_penalty, no_repeat_ngram_size, eos, early_stopping
    (3, 1.0, 0, 28, False),
    (4, 0.9, 4, 28, False),  # the paper's E2E setting, smaller
    (4, 2.0, 2, [28, 13], False),
    (5, -0.5, 3, 28, False),
    (3, 0.8, 3, [28, 13], True),
    (3, 1.5, 2, [28, 13], "never"),
]


@pytest.mark.torch
@pytest.mark.parametrize("nb,lp,ngram,eos,es", BEAM_CASES)
def test_matches_transformers_generate_on_toy(toy, nb, lp, ngram, eos, es):
    cfg, module, variables = toy
    shell = hf_shell(module, variables, cfg.vocab_size)
    settings = dict(
        num_beams=nb,
        length_penalty=lp,
        no_repeat_ngram_size=ngram,
        max_new_tokens=14,
        early_stopping=es,
    )
    want = [hf_generate(shell, p, eos, **settings) for p in PROMPTS]
    got = generate(
        module,
        variables,
        PROMPTS,
        cfg=cfg,
        eos_token_id=eos,
        pad_token_id=0,
        batch_size=8,
        init_cache=toy_init_cache,
        **settings,
    )
    assert got == want
    assert any(len(w) < 14 for w in want), "eos should end some hypotheses"


# ---------------------------------------------------------------- real tiny checkpoints

HF_CONFIGS = {
    "gpt2": dict(model_type="gpt2", vocab_size=48, n_embd=32, n_layer=2, n_head=4, n_positions=64,
                 bos_token_id=0, eos_token_id=0),
    "llama": dict(model_type="llama", vocab_size=48, hidden_size=32, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, intermediate_size=48,
                  max_position_embeddings=64, bos_token_id=0, eos_token_id=0),
    # prompts and outputs longer than the sliding window (4): its cache masks are exercised
    "gemma3": dict(model_type="gemma3_text", vocab_size=48, hidden_size=32, num_hidden_layers=3,
                   num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                   intermediate_size=48, max_position_embeddings=64, sliding_window=4,
                   sliding_window_pattern=2, query_pre_attn_scalar=24, bos_token_id=0,
                   eos_token_id=0, pad_token_id=0),
    "gemma2": dict(model_type="gemma2", vocab_size=48, hidden_size=32, num_hidden_layers=2,
                   num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                   intermediate_size=48, max_position_embeddings=64, sliding_window=4,
                   attn_logit_softcapping=2.0, final_logit_softcapping=3.0, bos_token_id=0,
                   eos_token_id=0, pad_token_id=0),
    "mistral": dict(model_type="mistral", vocab_size=48, hidden_size=32, num_hidden_layers=2,
                    num_attention_heads=4, num_key_value_heads=2, intermediate_size=48,
                    max_position_embeddings=64, sliding_window=4, bos_token_id=0,
                    eos_token_id=0),
    "qwen3": dict(model_type="qwen3", vocab_size=48, hidden_size=32, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                  intermediate_size=48, max_position_embeddings=64, bos_token_id=0,
                  eos_token_id=0),
    # fused qkv/gate_up (kept apart here), RoPE on half of each head, window 4
    "phi3": dict(model_type="phi3", vocab_size=48, hidden_size=32, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, intermediate_size=48,
                 max_position_embeddings=64, partial_rotary_factor=0.5, sliding_window=4,
                 bos_token_id=0, eos_token_id=0, pad_token_id=0),
}  # fmt: skip
REAL_PROMPTS = [[5, 9, 2], [7], [1, 3, 3, 8, 11, 4, 20, 2, 30, 6, 13], [17, 4], [40, 2, 3, 4, 5, 6]]


@pytest.fixture(scope="module", params=sorted(HF_CONFIGS))
def tiny_real(request, tmp_path_factory):
    """(HF torch model, our LoadedModel) for a tiny random checkpoint written by save_pretrained."""
    torch = pytest.importorskip("torch")
    tf = pytest.importorskip("transformers")
    from lora_jax.models.pretrained import load_model

    torch.manual_seed(0)
    kw = dict(HF_CONFIGS[request.param])
    hf_cfg = tf.AutoConfig.for_model(kw.pop("model_type"), **kw)
    model = tf.AutoModelForCausalLM.from_config(hf_cfg).eval()
    with torch.no_grad():  # HF's 0.02 init gives near-uniform logits: sharpen so argmax is stable
        for name, p in model.named_parameters():
            if "norm" in name or ".ln_" in name or "ln_f" in name:
                continue
            p.copy_(0.2 * torch.randn(p.shape))
    folder = tmp_path_factory.mktemp(request.param)
    model.save_pretrained(folder)
    return model, load_model(str(folder))


def hf_real_generate(model, prompt, eos, **kw) -> list[int]:
    import torch

    with torch.no_grad():
        out = model.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt),
                             dtype=torch.long), eos_token_id=eos, pad_token_id=0, do_sample=False,
                             **kw)[0, len(prompt) :].tolist()  # fmt: skip
    eos = [eos] if isinstance(eos, int) else eos
    return out[: next((i for i, t in enumerate(out) if t in eos), len(out))]


@pytest.mark.torch
def test_matches_transformers_on_tiny_gpt2_and_llama(tiny_real):
    model, loaded = tiny_real
    variables = {"params": loaded.params}
    # an eos id that greedy decoding reaches for some prompts but not all
    free = [hf_real_generate(model, p, 47, max_new_tokens=12) for p in REAL_PROMPTS]
    counts = {t: sum(t in o for o in free) for o in free for t in o}
    eos = min(counts, key=lambda t: (counts[t], t))  # in as few outputs as possible
    lengths = []
    e2e_prompts = [p + [eos] for p in REAL_PROMPTS]  # E2E contexts end with EOS; pad = EOS too
    for prompts, settings in (
        (REAL_PROMPTS, dict(num_beams=1, no_repeat_ngram_size=3)),
        (REAL_PROMPTS, dict(num_beams=4, length_penalty=0.9, no_repeat_ngram_size=3)),
        (e2e_prompts, dict(num_beams=5, length_penalty=0.9, no_repeat_ngram_size=4)),
    ):
        want = [hf_real_generate(model, p, [eos, 47], max_new_tokens=12, **settings)
                for p in prompts]  # fmt: skip
        got = generate(loaded.module, variables, prompts, cfg=loaded.config,
                       eos_token_id=[eos, 47], pad_token_id=eos, max_new_tokens=12, batch_size=8,
                       **settings)  # fmt: skip
        assert got == want, settings
        assert any(len(w) < 12 for w in want), f"eos should end some outputs: {want}"
        lengths += [len(w) for w in want]
    assert 12 in lengths, "some output should run to max_new_tokens"
    if loaded.config.family == "gpt2":
        with pytest.raises(ValueError, match="learned positions"):
            generate(loaded.module, variables, REAL_PROMPTS, cfg=loaded.config, eos_token_id=eos,
                     pad_token_id=0, max_new_tokens=60)  # fmt: skip
