"""A scan run's evaluation: the frozen base held once, stacked, and decoded through
``LayerViews`` (per-layer blocks on views made inside the jitted decoder) gives the tokens the
per-layer model gives, greedy and beam, merged and unmerged; stacking with ``consume=True``
leaves one copy of the base alive.

fp32 with ``jax.default_matmul_precision("highest")``."""

from __future__ import annotations

import gc

import jax
import numpy as np
import pytest

from lora_jax.decoding import generate
from lora_jax.evaluate import decode_variables
from lora_jax.models.layers import LayerViews, stack_layers
from tests.models.test_scan_remat import GPT2, LLAMA, PREFIX, setup

PROMPTS = [[5, 9, 2, 7], [3, 1], [8, 8, 4, 6, 2, 11, 13]]


@pytest.mark.parametrize(
    "cfg, num_beams, merged",
    [(LLAMA, 1, False), (GPT2, 3, True)],
    ids=["llama-greedy-unmerged", "gpt2-beam-merged"],
)
def test_layer_views_decode_like_the_loop_model(cfg, num_beams, merged):
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
        assert ("lora" in scan_vars) != merged  # merged: W + s·BA on the stacked kernels
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
