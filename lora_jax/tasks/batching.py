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

    def positions_at(self, step: int) -> int:
        """Token positions (real and padding) of a step's batch, without building it."""
        longest = int(self.lengths[self.indices_at(step)].max())
        return self.batch_size * next(b for b in self.buckets if b >= longest)

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


# ---------------------------------------------------------------------------- sequence packing
def first_fit(lengths: Sequence[int], row_len: int) -> list[list[int]]:
    """Positions into ``lengths``, grouped into rows of at most ``row_len`` tokens: each item
    goes to the first row it fits in (in the given order), else opens a new row. Deterministic;
    never more rows than items."""
    rows: list[list[int]] = []
    free: list[int] = []
    for i, n in enumerate(lengths):
        n = int(n)
        if n > row_len:
            raise DataError(f"an example of {n} tokens does not fit a row of {row_len}")
        for r, room in enumerate(free):
            if n <= room:
                rows[r].append(i)
                free[r] -= n
                break
        else:
            rows.append([i])
            free.append(row_len - n)
    return rows


def pack_examples(
    examples: Sequence[dict[str, Sequence[int]]],
    row_len: int,
    rows: int | None = None,
    row_multiple: int = 1,
    pad_id: int = 0,
) -> dict[str, np.ndarray]:
    """Pack ``examples`` ({input_ids, loss_mask}, each <= ``row_len`` tokens) first-fit into
    rows of ``row_len`` tokens -> input_ids, segment_ids, positions, attention_mask (int32) and
    loss_mask (float32), all ``[R, row_len]``.

    Each example's tokens sit contiguously in one row with ``segment_ids`` = its 1-based place
    in that row and ``positions`` = 0, 1, ... restarting per example; padding has segment 0,
    position 0, loss_mask 0. ``loss_mask`` of an example's first token is set to 0: the loss
    predicts token t from t-1 within a row, so a first token would otherwise be "predicted" from
    the previous example's last one (unpacked, a row's first token is never a target either).
    R is the rows first-fit needs, rounded up to a multiple of ``row_multiple`` (data-parallel
    devices), or exactly ``rows`` when given (filler rows are all padding).
    """
    lengths = [len(e["input_ids"]) for e in examples]
    groups = first_fit(lengths, row_len)
    need = -(-max(len(groups), 1) // row_multiple) * row_multiple
    if rows is None:
        rows = need
    elif rows < len(groups):
        raise ValueError(f"{len(examples)} examples need {len(groups)} rows, more than {rows}")
    return _fill(examples, lengths, groups, rows, row_len, pad_id)


def balance(lengths: Sequence[int], rows: int) -> list[list[int]]:
    """Positions into ``lengths`` spread over ``rows`` rows, longest first, each to the row with
    the fewest tokens so far (a row's examples keep their given order); deterministic."""
    load = [0] * rows
    groups: list[list[int]] = [[] for _ in range(rows)]
    for i in sorted(range(len(lengths)), key=lambda i: (-int(lengths[i]), i)):
        r = min(range(rows), key=lambda r: (load[r], r))
        groups[r].append(i)
        load[r] += int(lengths[i])
    return [sorted(g) for g in groups]


def step_row_len(lengths: Sequence[int], rows: int, multiple: int) -> int:
    """The row length of :func:`pack_step`: the fullest row's tokens rounded up to ``multiple``."""
    load = [sum(int(lengths[i]) for i in g) for g in balance(lengths, rows)]
    return max(-(-max(load) // multiple) * multiple, multiple)


def pack_step(
    examples: Sequence[dict[str, Sequence[int]]], rows: int = 1, multiple: int = 64,
    pad_id: int = 0,
) -> dict[str, np.ndarray]:  # fmt: skip
    """Pack a step's examples into exactly ``rows`` rows (one per data-parallel device), balanced
    by tokens (:func:`balance`), each as long as the fullest row rounded up to ``multiple``: the
    padding is under ``multiple`` tokens per row, and the step's shape is its token count rounded
    (``data.pack=step``). Same layout and loss rules as :func:`pack_examples`."""
    lengths = [len(e["input_ids"]) for e in examples]
    groups = balance(lengths, rows)
    return _fill(examples, lengths, groups, rows, step_row_len(lengths, rows, multiple), pad_id)


def _fill(examples, lengths, groups, rows: int, row_len: int, pad_id: int) -> dict[str, np.ndarray]:
    ids = np.full((rows, row_len), pad_id, np.int32)
    seg = np.zeros((rows, row_len), np.int32)
    pos = np.zeros((rows, row_len), np.int32)
    loss = np.zeros((rows, row_len), np.float32)
    for r, group in enumerate(groups):
        t = 0
        for s, i in enumerate(group, start=1):
            n = lengths[i]
            ids[r, t : t + n] = examples[i]["input_ids"]
            seg[r, t : t + n] = s
            pos[r, t : t + n] = np.arange(n)
            loss[r, t : t + n] = examples[i]["loss_mask"]
            loss[r, t] = 0.0
            t += n
    attn = (seg > 0).astype(np.int32)
    return {"input_ids": ids, "segment_ids": seg, "positions": pos, "attention_mask": attn,
            "loss_mask": loss}  # fmt: skip


class PackedRowBatches(TrainBatches):
    """:class:`TrainBatches` whose step batches are packed rows (``data.packing``): the same
    examples per step, in the same order and resumable the same way, but first-fit into rows of
    ``row_len`` tokens (:func:`pack_examples`) instead of one padded row each. The row count R
    varies with the step's lengths, within ``row_multiple, 2·row_multiple, ..`` up to the batch
    size rounded up to ``row_multiple``, so at most that many step shapes are compiled (the
    ones a run's steps need: E2E on SmolLM2 at batch 8 and 128 tokens, 4-6 rows)."""

    def __init__(self, encoded, batch_size, seed, row_len: int, pad_id: int = 0,
                 row_multiple: int = 1, step_multiple: int | None = None) -> None:  # fmt: skip
        super().__init__(encoded, batch_size, seed, buckets=[row_len], pad_id=pad_id)
        if row_multiple < 1:
            raise ConfigError(f"row_multiple must be >= 1, got {row_multiple}")
        if step_multiple is not None and step_multiple < 1:
            raise ConfigError(f"data.step_multiple must be >= 1, got {step_multiple}")
        self.row_len = row_len
        self.row_multiple = row_multiple
        self.step_multiple = step_multiple  # set: data.pack=step (pack_step)

    def batch_at(self, step: int) -> dict[str, np.ndarray]:
        """input_ids, segment_ids, positions, attention_mask [R, L] int32, loss_mask [R, L]
        float32."""
        examples = [self.encoded[j] for j in self.indices_at(step)]
        if self.step_multiple is not None:
            return pack_step(examples, self.row_multiple, self.step_multiple, self.pad_id)
        return pack_examples(examples, self.row_len, row_multiple=self.row_multiple,
                             pad_id=self.pad_id)  # fmt: skip

    def positions_at(self, step: int) -> int:
        lengths = self.lengths[self.indices_at(step)]
        if self.step_multiple is not None:
            return self.row_multiple * step_row_len(lengths, self.row_multiple, self.step_multiple)
        rows = len(first_fit(lengths, self.row_len))
        return -(-rows // self.row_multiple) * self.row_multiple * self.row_len

    def row_counts(self) -> list[int]:
        """The row counts a step may have (each one compiled step shape, at most)."""
        m = self.row_multiple
        return list(range(m, -(-self.batch_size // m) * m + 1, m))
