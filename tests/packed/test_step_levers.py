"""``trainer.remat`` / ``trainer.scan`` / ``trainer.loss_chunk`` inside a pack: the packed step
built with them computes what the plain packed step computes, and XLA's memory analysis of the
compiled packed step shows the temporaries they save.

fp32 on CPU with ``jax.default_matmul_precision("highest")``. Losses at rtol 1e-6 and each
job's gradients at 1e-5 of each leaf's largest entry (scan and the chunked loss sum in another
order than the plain step). Adapters after several Adam steps are not compared: Adam's m/√v
turns last-bit gradient differences of entries near ``eps`` into update differences of up to
~2e-4 of the leaf (tests/packed/test_step.py::test_packed_gradients_equal_solo_gradients)."""

from __future__ import annotations

import jax
import numpy as np

from lora_jax.lora.stack import stack, unstack
from lora_jax.models.layers import stack_layers
from lora_jax.run.pack_memory import step_memory
from tests.packed.test_step import (
    JOBS,
    _assert_tree_close,
    _batches,
    _packed,
    _packed_grads,
    _setup,
    _with_b,
)


def test_pack_with_scan_remat_and_loss_chunk_equals_the_plain_pack(tiny_e2e_gpt2_dir):
    """Each job's loss and gradient (at adapters with B != 0), and a step of the packed step
    built with the levers runs and reports the same loss."""
    with jax.default_matmul_precision("highest"):
        lm, trees, opts = _setup(tiny_e2e_gpt2_dir, 0.0, JOBS)
        trees = _with_b(trees)
        batch = _batches(lm.config.vocab_size, 1)[0]
        eps = [o["label_smoothing"] for o in opts]
        levers = dict(module=lm.module.clone(scan_layers=True, remat="full"), loss_chunk=7,
                      scan_prefix="h", frozen=stack_layers(lm.params, "h"))  # fmt: skip
        loss, grads = _packed_grads(lm, stack(trees)[0], batch, eps)
        got_loss, got = _packed_grads(lm, stack(trees)[0], batch, eps, **levers)
        _, _, ok, _, step_loss = _packed(lm, trees, opts, [j[3] for j in JOBS], [batch], 0.0,
                                         **levers)  # fmt: skip
    np.testing.assert_allclose(np.asarray(got_loss), np.asarray(loss), rtol=1e-6)
    for k, tree in enumerate(trees):
        _assert_tree_close(unstack(got, k, tree), unstack(grads, k, tree), tol=1e-5, floor=0.0)
    assert bool(ok.all())
    np.testing.assert_allclose(step_loss[:, 0], np.asarray(loss), rtol=1e-6)


def test_remat_and_loss_chunk_lower_the_packed_steps_temp_memory(tiny_e2e_gpt2_dir):
    """K = 3 adapters, batch [16, 64], layers scanned (in a Python-unrolled loop XLA:CPU's
    scheduler hoists the recomputation and remat saves nothing, as for the solo step:
    tests/models/test_scan_remat.py)."""
    lm, trees, _ = _setup(tiny_e2e_gpt2_dir, 0.0, JOBS[:1])  # q,v: a smaller program to compile
    k, b, t = 3, 16, 64
    frozen = jax.eval_shape(lambda p: stack_layers(p, "h"), lm.params)

    def temp(remat: str, loss_chunk: int | None) -> int:
        module = lm.module.clone(scan_layers=True, remat=remat)
        mem = step_memory(module, frozen, trees, k, (b, t), loss_chunk=loss_chunk, scan_prefix="h")
        return mem.temp

    plain, full, chunked = temp("none", None), temp("full", None), temp("none", 16)
    assert full < 0.6 * plain, (plain, full)
    logits_bytes = k * b * (t - 1) * lm.config.vocab_size * 4  # [K, B, T-1, V] fp32
    assert plain > logits_bytes  # the plain loss holds every job's full logits
    assert chunked < plain - logits_bytes, (plain, chunked)  # the chunked one never does
