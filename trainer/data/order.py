"""Pure rank arithmetic of the data stream: the order of one epoch, and each rank's share of it.

Order: the record batches ("blocks") of all shards are permuted, the permuted blocks are cut
into windows of `window_blocks` blocks, and rows are permuted inside each window. Window w's
rows are shuffled by a generator seeded with (seed, epoch, w), so the row at any stream position
is computed from its own window alone: nothing ever holds the whole epoch's order. Memory is
O(blocks + rows of two windows): about 8 MB of block ids for 10^9 rows in blocks of 1024, where
a materialised order would take 8 GB per rank. The order is a pure function of the manifest,
the seed and the epoch, so resuming never replays data.

Assignment: from stream position `start` (samples already consumed in this epoch, by all ranks
together), micro-batch j of rank r is `order[start + (j*world + r)*micro : ... + micro]`. After k
micro-steps the position is `start + k*world*micro`, which is what lets a run resume at step N
exactly. (A checkpoint still pins the number of workers: the engines' optimizer shards are
per rank, see launcher/resume.py.)
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator, Sequence
from typing import overload

import numpy as np

PAD_ROW = -1
_CACHED_WINDOWS = 2  # a micro-batch that straddles a window boundary needs both


class EpochOrder:
    """The global sample order of one epoch, as row indices (rows numbered block after block),
    computed one window at a time."""

    def __init__(
        self, block_rows: np.ndarray, epoch: int, seed: int, shuffle: bool, window_blocks: int
    ) -> None:
        block_rows = np.asarray(block_rows, dtype=np.int64)
        self._block_rows = block_rows
        self._block_start = np.cumsum(block_rows) - block_rows
        self._seed, self._epoch, self._shuffle = seed, epoch, shuffle
        self._window_blocks = max(int(window_blocks), 1)
        count = len(block_rows)
        self._blocks = (
            np.random.default_rng([seed, epoch]).permutation(count)
            if shuffle
            else np.arange(count, dtype=np.int64)
        )
        firsts = np.arange(0, count, self._window_blocks)
        window_rows = (
            np.add.reduceat(block_rows[self._blocks], firsts) if count else np.zeros(0, np.int64)
        )
        self._window_start = np.cumsum(window_rows) - window_rows
        self._total = int(block_rows.sum())
        self._cache: OrderedDict[int, np.ndarray] = OrderedDict()

    def __len__(self) -> int:
        return self._total

    def rows(self, start: int, stop: int) -> np.ndarray:
        """`order[start:stop]` (clipped to the epoch), computing only the windows it spans."""
        start, stop = max(start, 0), min(stop, self._total)
        if start >= stop:
            return np.zeros(0, dtype=np.int64)
        parts = []
        window = int(np.searchsorted(self._window_start, start, side="right")) - 1
        while start < stop:
            rows = self._window(window)
            offset = start - int(self._window_start[window])
            piece = rows[offset : offset + stop - start]
            parts.append(piece)
            start += len(piece)
            window += 1
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def _window(self, window: int) -> np.ndarray:
        rows = self._cache.get(window)
        if rows is not None:
            self._cache.move_to_end(window)
            return rows
        first = window * self._window_blocks
        blocks = self._blocks[first : first + self._window_blocks]
        starts, sizes = self._block_start[blocks].tolist(), self._block_rows[blocks].tolist()
        rows = np.concatenate(
            [np.arange(s, s + n, dtype=np.int64) for s, n in zip(starts, sizes, strict=True)]
        )
        if self._shuffle:
            rows = np.random.default_rng([self._seed, self._epoch, window]).permutation(rows)
        self._cache[window] = rows
        if len(self._cache) > _CACHED_WINDOWS:
            self._cache.popitem(last=False)
        return rows


class RankBatches(Sequence[np.ndarray]):
    """Rank `rank`'s micro-batches (row indices; PAD_ROW for padding) from stream position
    `start` to the end of the epoch, each computed when it is asked for.

    Training (`pad=False`) drops the last partial unit of `world * micro` samples; evaluation
    (`pad=True`) pads it with PAD_ROW, so every row is seen once. Either way every rank has the
    same number of micro-batches, so no rank waits forever at a collective the others have left.
    """

    def __init__(
        self,
        order: EpochOrder,
        start: int,
        world_size: int,
        rank: int,
        micro: int,
        pad: bool,
        indices: range | None = None,
    ) -> None:
        self._order, self._start = order, start
        self._world, self._rank, self._micro, self._pad = world_size, rank, micro, pad
        if indices is None:
            left, unit = max(len(order) - start, 0), world_size * micro
            indices = range(-(-left // unit) if pad else left // unit)
        self._indices = indices

    def __len__(self) -> int:
        return len(self._indices)

    @overload
    def __getitem__(self, index: int) -> np.ndarray: ...

    @overload
    def __getitem__(self, index: slice) -> RankBatches: ...

    def __getitem__(self, index: int | slice) -> np.ndarray | RankBatches:
        if isinstance(index, slice):
            o = self
            return RankBatches(
                o._order, o._start, o._world, o._rank, o._micro, o._pad, o._indices[index]
            )
        first = self._start + (self._indices[index] * self._world + self._rank) * self._micro
        rows = self._order.rows(first, first + self._micro)
        if len(rows) < self._micro:  # only ever the padded tail of an evaluation
            rows = np.concatenate([rows, np.full(self._micro - len(rows), PAD_ROW, np.int64)])
        return rows

    def __iter__(self) -> Iterator[np.ndarray]:
        return (self[i] for i in range(len(self)))


def fill_padding(rows: np.ndarray) -> np.ndarray:
    """Padding rows borrow a real row's content (masked out later); an all-padding batch row 0."""
    is_real = rows != PAD_ROW
    return np.where(is_real, rows, rows[is_real][0] if is_real.any() else 0)
