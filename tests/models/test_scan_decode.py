"""A scan run's evaluation: the frozen base held once, stacked, and decoded through
``LayerViews`` (per-layer blocks on views made inside the jitted decoder) gives the tokens the
per-layer model gives; merging layer-stacked kernels equals merging each layer; stacking with
``consume=True`` leaves one copy of the base alive.

fp32 with ``jax.default_matmul_precision("highest")``."""

from __future__ import annotations

import gc

import jax
import numpy as np
import pytest

from lora_jax.eval.decoding import generate
from lora_jax.eval.evaluate import decode_variables
from lora_jax.lora import merge
from lora_jax.models.layers import LayerViews, stack_layers, unstack_layers
from lora_jax.models.registry import lora_modules
from tests.models.test_scan_remat import GPT2, LLAMA, PREFIX, setup

PROMPTS = [[5, 9, 2, 7], [3, 1], [8, 8, 4, 6, 2, 11, 13]]


def test_layer_views_beam_search_like_the_loop_model():
    """Beam search with the LoRA branch on unstacked views, Llama (GQA). Greedy on merged
    layer-stacked kernels, GPT-2, through the app: tests/test_step_train_levers.py (a scan run
    decodes the loop run's tokens); merge on stacked trees: test_merge_of_stacked_layers."""
    cfg, num_beams, merged = LLAMA, 3, False
    module, params, lora, _ = setup(cfg)
    prefix = PREFIX[cfg.model_type]
    kw = dict(cfg=cfg, eos_token_id=10_000, pad_token_id=0, max_new_tokens=6, num_beams=num_beams,
              batch_size=4)  # fmt: skip
    with jax.default_matmul_precision("highest"):
        # the adapters matter (a decoder that dropped them would be caught): other logits
        ids = np.asarray(PROMPTS[2])[None]
        with_lora = module.apply({"params": params, "lora": lora}, ids)[0]
        bare = module.apply({"params": params}, ids)[0]
        assert float(np.abs(with_lora - bare).max()) > 0.1 * float(np.abs(bare).max())
        loop_vars = decode_variables({"params": params, "lora": lora}, cfg, merged)
        want = generate(module, loop_vars, PROMPTS, **kw)
        stacked = {"params": stack_layers(params, prefix), "lora": stack_layers(lora, prefix)}
        scan_vars = decode_variables(stacked, cfg, merged)
        got = generate(LayerViews(module, prefix), scan_vars, PROMPTS, **kw)
    assert got == want
    assert all(len(t) == 6 for t in want)  # an eos outside the vocabulary: every step compared


def _live_bytes() -> int:
    gc.collect()
    return sum(x.nbytes for x in jax.live_arrays() if not x.is_deleted())


def test_stacking_once_leaves_one_copy_alive():
    """``stack_layers(consume=True)`` (what a ``trainer.scan`` run does after loading) replaces
    the per-layer arrays: the live device bytes stay at one copy of the base; the plain
    stack (the old layout: both trees kept) holds the layers twice."""
    module = setup(LLAMA)[0]
    params = jax.jit(module.init)(jax.random.key(5), np.zeros((1, 4), np.int32))["params"]
    per_layer = sum(x.nbytes for k, v in params.items() if k.startswith("layers_")
                    for x in jax.tree.leaves(v))  # fmt: skip
    assert per_layer > 0
    before = _live_bytes()
    both = stack_layers(params, "layers")  # a second, stacked copy beside the per-layer one
    assert _live_bytes() - before == per_layer
    del both
    params = stack_layers(params, "layers", consume=True)
    assert _live_bytes() == before  # the stacked layers took the per-layer ones' place
    assert params["layers"]["self_attn"]["q_proj"]["kernel"].shape[0] == LLAMA.num_layers


@pytest.mark.parametrize("cfg", [GPT2, LLAMA], ids=["gpt2", "llama"])
def test_merge_of_stacked_layers_equals_merge_per_layer(cfg):
    """``merge`` on layer-stacked params and LoRA (what merged decoding does in a scan run)
    gives each layer's merged kernels, for fused (GPT-2 c_attn) and separate projections."""
    _, params, lora, _ = setup(cfg)
    prefix, mods = PREFIX[cfg.model_type], lora_modules(cfg)

    def stacked(p, lo):
        return unstack_layers(
            merge(stack_layers(p, prefix), stack_layers(lo, prefix), mods), prefix
        )

    with jax.default_matmul_precision("highest"):  # jitted: one compile, not one per op
        want = jax.jit(lambda p, lo: merge(p, lo, mods))(params, lora)
        got = jax.jit(stacked)(params, lora)
    assert jax.tree.structure(got) == jax.tree.structure(want)
    changed = 0
    for x, y, p in zip(jax.tree.leaves(got), jax.tree.leaves(want), jax.tree.leaves(params)):
        np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-6 * float(np.abs(y).max()))
        changed += int(not np.array_equal(y, p))
    assert changed >= 2 * cfg.num_layers  # the adapted kernels of every layer moved
