"""A sharded checkpoint (LoRA + optimizer state, fsdp-sharded on a 2×4 mesh) restores onto a
different mesh shape (8×1, and fsdp 8) with the target shardings and the same values."""

from __future__ import annotations

import jax
import numpy as np

from lora_jax.train import sharding
from lora_jax.train.checkpoint import Checkpointer


def test_restore_onto_another_mesh(setup, tmp_path):
    _, _, lora, tx, _ = setup
    opt = tx.init(lora)
    src = sharding.make_mesh(2, 4)
    lora_s = sharding.place(lora, sharding.state_shardings(lora, src, "fsdp"))
    opt_s = sharding.place(opt, sharding.state_shardings(opt, src, "fsdp"))
    ckpt = Checkpointer(tmp_path / "ck")
    ckpt.save(7, lora_s, opt_s)
    ckpt.close()
    for shape, rule in (((1, 8), "fsdp"), ((8, 1), "replicated")):
        dst = sharding.make_mesh(*shape)
        lsh = sharding.state_shardings(lora, dst, rule)
        osh = sharding.state_shardings(opt, dst, rule)
        ck = Checkpointer(tmp_path / "ck")
        l2, o2, step, _ = ck.restore(sharding.abstract(lora, lsh), sharding.abstract(opt, osh))
        ck.close()
        assert step == 7
        for x, want in zip(jax.tree.leaves(l2), jax.tree.leaves(lsh)):
            assert x.sharding.is_equivalent_to(want, x.ndim)
        for x, y in zip(jax.tree.leaves((l2, o2)), jax.tree.leaves((lora, opt))):
            np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    # a leaf that fsdp=8 splits really is split on the new mesh
    a = max(jax.tree.leaves(l2), key=lambda x: x.size)
    assert a.sharding.is_fully_replicated  # the last target was replicated
