"""Gemma 2/3, Qwen3 and Qwen2's per-layer windows beyond plain logits (those are
test_parity.py's; greedy/beam against generate: tests/test_decoding.py): packed rows
(segment ids, whole-row and in blocks) give each example's own logits, each feature of the
config is exercised by the tiny checkpoints (removing it changes the logits), and the
per-layer differences are refused where they cannot hold (scan_layers)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_parity import load_dir, padded_batch

from lora_jax.errors import ConfigError
from lora_jax.models import convert
from lora_jax.models.registry import build_model

pytestmark = pytest.mark.torch


def _loaded(make_tiny_hf_model, kind):
    cfg, state = load_dir(make_tiny_hf_model(kind))
    return cfg, convert.params_from_hf(state, cfg)


def _logits(cfg, params, ids, **kw):
    with jax.default_matmul_precision("highest"):
        return np.asarray(build_model(cfg).apply({"params": params}, jnp.asarray(ids), **kw)[0])


@pytest.mark.parametrize("kind", ["gemma3", "gemma2", "qwen2_window"])
@pytest.mark.parametrize("block", [None, 8])
def test_packed_rows_give_each_examples_logits(kind, block, make_tiny_hf_model):
    """Three examples (7, 8 and 5 tokens, longer than the window of 4) in one 24-token row
    (one padding token); with ``packed_block=8`` the row is attended in blocks of 8 queries
    over 16 keys (data.pack=step)."""
    cfg, params = _loaded(make_tiny_hf_model, kind)
    assert cfg.any_window == 4 and len(set(map(cfg.window, range(cfg.num_layers)))) == 2
    cfg = cfg.replace(packed_block=block)
    rng = np.random.default_rng(3)
    examples = [rng.integers(0, cfg.vocab_size, n).astype(np.int32) for n in (7, 8, 5)]
    row = np.concatenate([*examples, [0]])[None]
    segments = np.concatenate([np.full(len(e), i + 1) for i, e in enumerate(examples)] + [[0]])
    packed = _logits(cfg, params, row, segment_ids=jnp.asarray(segments[None], jnp.int32))
    start = 0
    for e in examples:
        alone = _logits(cfg, params, e[None])[0]
        got = packed[0, start : start + len(e)]
        np.testing.assert_allclose(got, alone, rtol=0, atol=1e-5 * np.abs(alone).max())
        start += len(e)


@pytest.mark.parametrize(
    "kind,change",
    [
        ("gemma3", dict(sliding_window=None)),
        ("gemma3", dict(rope_local_theta=None)),  # the sliding layers' own RoPE base
        ("gemma3", dict(query_pre_attn_scalar=16)),  # = head_dim: the Llama scale
        ("gemma2", dict(attn_logit_softcapping=None)),
        ("gemma2", dict(final_logit_softcapping=None)),
        ("qwen3", dict(qk_norm=False)),
        ("phi3", dict(sliding_window=None)),
        ("phi3", dict(partial_rotary_factor=1.0)),
        ("phi3_longrope", dict(rope_scaling=None)),
    ],
    ids=[
        "window",
        "local_rope",
        "score_scale",
        "attn_softcap",
        "final_softcap",
        "qk_norm",
        "phi3_window",
        "partial_rope",
        "longrope",
    ],  # fmt: skip
)
def test_each_feature_changes_the_logits(kind, change, make_tiny_hf_model):
    """Else the parity test on these checkpoints would not prove the feature is implemented."""
    cfg, params = _loaded(make_tiny_hf_model, kind)  # (qk_norm=False leaves its params unread)
    ids, mask, _ = padded_batch(cfg.vocab_size)
    base = _logits(cfg, params, ids, attention_mask=jnp.asarray(mask))
    other = _logits(cfg.replace(**change), params, ids, attention_mask=jnp.asarray(mask))
    real = mask.astype(bool)
    assert np.abs(base - other)[real].max() > 1e-2 * np.abs(base)[real].max()


def test_scan_layers_refuses_alternating_layers(make_tiny_hf_model):
    cfg, params = _loaded(make_tiny_hf_model, "gemma3")
    module = build_model(cfg).clone(scan_layers=True)
    with pytest.raises(ConfigError, match="trainer.scan=false"):
        jax.eval_shape(module.init, jax.random.key(0), jnp.zeros((1, 4), jnp.int32))


def test_gemma_hidden_states_refuse_a_soft_capped_head(make_tiny_hf_model):
    """A loss over hidden states (trainer.loss_chunk) would skip Gemma 2's logit soft-cap."""
    cfg, params = _loaded(make_tiny_hf_model, "gemma2")
    with pytest.raises(ConfigError, match="loss_chunk=null"):
        build_model(cfg).apply({"params": params}, jnp.zeros((1, 4), jnp.int32), return_hidden=True)
