"""Deterministic, resumable training batches with a handful of padded shapes.

Epoch e visits the examples in the order np.random.default_rng([seed, e]).permutation(N),
cut into steps_per_epoch = ceil(N / batch_size) batches. Each batch is right-padded to the
smallest bucket length >= its longest sequence (default buckets: powers of two from 32 up to
max_len, plus max_len), so jit compiles at most len(buckets) programs. The last batch of an
epoch is filled with fully masked rows (input_ids = pad, attention_mask = 0, loss_mask = 0),
so the batch size is fixed. `batch_at(step)` is a pure function of the global step: a run
resumed from a checkpointed step sees exactly the batches it would have seen.

With ``sort_window = k`` (batches), each run of ``k·batch_size`` examples of the epoch's
permutation is sorted by length and cut into batches whose order is then shuffled
(np.random.default_rng([seed, epoch, window start])), so a batch holds examples of similar
length and pads less; it stays a pure function of the step (deterministic and resumable).

Padding rows have no key to attend to; the model must use a finite mask value (e.g.
jnp.finfo(dtype).min, as flax's attention does) so their logits stay finite.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from lora_jax.errors import ConfigError, DataError


def default_buckets(max_len: int, smallest: int = 32) -> list[int]:
    """[32, 64, ..., max_len]: powers of two below max_len, then max_len itself."""
    if max_len < 1:
        raise ConfigError(f"max_len must be positive, got {max_len}")
    out, n = [], smallest
    while n < max_len:
        out.append(n)
        n *= 2
    return out + [max_len]


def linear_buckets(max_len: int, step: int = 16) -> list[int]:
    """[step, 2·step, ..., max_len]: finer shapes than powers of two (more compiles, less
    padding; with sort_window, E2E on SmolLM2 at max_len 128 goes from 51% to 89% real tokens)."""
    if max_len < 1 or step < 1:
        raise ConfigError(f"max_len and step must be positive, got {max_len}, {step}")
    return list(range(step, max_len, step)) + [max_len]


class TrainBatches:
    """Batches for global steps. encoded: [{input_ids: [T_i], loss_mask: [T_i]}, ...]."""

    def __init__(
        self,
        encoded: Sequence[dict[str, Sequence[int]]],
        batch_size: int,
        seed: int,
        buckets: Sequence[int] | None = None,
        pad_id: int = 0,
        sort_window: int = 0,
    ) -> None:
        if not encoded:
            raise DataError("no training examples to batch")
        if batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
        lengths = np.array([len(e["input_ids"]) for e in encoded])
        for i, e in enumerate(encoded):
            if len(e["loss_mask"]) != lengths[i]:
                raise ValueError(f"example {i}: input_ids and loss_mask differ in length")
        self.buckets = sorted(buckets) if buckets else default_buckets(int(lengths.max()))
        if lengths.max() > self.buckets[-1]:
            i = int(lengths.argmax())
            raise ValueError(
                f"example {i} has {lengths[i]} tokens, more than the largest bucket "
                f"{self.buckets[-1]}; encode with a smaller max_len or add a bucket"
            )
        self.encoded = encoded
        self.lengths = lengths
        self.batch_size = batch_size
        self.seed = seed
        self.pad_id = pad_id
        if sort_window < 0:
            raise ConfigError(f"sort_window must be >= 0 batches (0 = off), got {sort_window}")
        self.sort_window = sort_window
        self.steps_per_epoch = math.ceil(len(encoded) / batch_size)
        self._perm_epoch: int | None = None
        self._perm: np.ndarray | None = None

    def order(self, epoch: int) -> np.ndarray:
        """Example indices of an epoch, in visiting order: [N]."""
        if self._perm_epoch != epoch:
            self._perm = np.random.default_rng([self.seed, epoch]).permutation(len(self.encoded))
            if self.sort_window:
                self._perm = self._sorted_windows(self._perm, epoch)
            self._perm_epoch = epoch
        assert self._perm is not None
        return self._perm

    def _sorted_windows(self, perm: np.ndarray, epoch: int) -> np.ndarray:
        bs, w = self.batch_size, self.sort_window * self.batch_size
        out = []
        for start in range(0, len(perm), w):
            chunk = perm[start : start + w]
            chunk = chunk[np.argsort(self.lengths[chunk], kind="stable")]
            n_full = len(chunk) // bs
            shuffle = np.random.default_rng([self.seed, epoch, start]).permutation(n_full)
            out.extend(chunk[j * bs : (j + 1) * bs] for j in shuffle)
            out.append(chunk[n_full * bs :])  # the epoch's last, partial batch stays last
        return np.concatenate(out)

    def indices_at(self, step: int) -> np.ndarray:
        """Example indices of a global step's batch (may be fewer than batch_size)."""
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        epoch, i = divmod(step, self.steps_per_epoch)
        return self.order(epoch)[i * self.batch_size : (i + 1) * self.batch_size]

    def batch_at(self, step: int) -> dict[str, np.ndarray]:
        """input_ids [B,T] int32, attention_mask [B,T] int32, loss_mask [B,T] float32."""
        idx = self.indices_at(step)
        longest = int(self.lengths[idx].max())
        t = next(b for b in self.buckets if b >= longest)
        ids = np.full((self.batch_size, t), self.pad_id, np.int32)
        attn = np.zeros((self.batch_size, t), np.int32)
        loss = np.zeros((self.batch_size, t), np.float32)
        for row, j in enumerate(idx):
            n = int(self.lengths[j])
            ids[row, :n] = self.encoded[j]["input_ids"]
            attn[row, :n] = 1
            loss[row, :n] = self.encoded[j]["loss_mask"]
        return {"input_ids": ids, "attention_mask": attn, "loss_mask": loss}

    def __iter__(self):
        """Endless batches from step 0 (use batch_at(step) to resume)."""
        step = 0
        while True:
            yield self.batch_at(step)
            step += 1
