"""Pure rank arithmetic of the data stream: the order of one epoch, and each rank's share of it.

Order: the record batches ("blocks") of all shards are permuted, cut into windows of
`window_blocks` blocks, and rows are permuted inside each window. A rank therefore only ever
needs the blocks of the current window (plus the next at a boundary) in memory, and the order
can be recomputed from the manifest alone, so resuming never replays data.

Assignment: from stream position `start` (samples already consumed in this epoch, by all ranks
together), micro-batch j of rank r is `order[start + (j*world + r)*micro : ... + micro]`. After k
micro-steps the position is `start + k*world*micro` whatever the world size, which is what lets a
run resume at step N exactly, even with a different number of workers.
"""

from __future__ import annotations

import numpy as np

PAD_ROW = -1


def epoch_order(
    block_rows: np.ndarray, epoch: int, seed: int, shuffle: bool, window_blocks: int
) -> np.ndarray:
    """The global sample order of one epoch, as row indices (rows numbered block after block)."""
    total = int(block_rows.sum())
    if not shuffle:
        return np.arange(total, dtype=np.int64)
    rng = np.random.default_rng([seed, epoch])
    starts = np.concatenate([[0], np.cumsum(block_rows)[:-1]])
    blocks = rng.permutation(len(block_rows))
    parts = []
    for first in range(0, len(blocks), window_blocks):
        window = blocks[first : first + window_blocks]
        rows = np.concatenate(
            [np.arange(int(starts[b]), int(starts[b] + block_rows[b])) for b in window]
        )
        parts.append(rng.permutation(rows))
    return np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, dtype=np.int64)


def fit_order(order: np.ndarray, unit: int, pad: bool) -> np.ndarray:
    """Trim (training) or pad with PAD_ROW (evaluation) so the order splits into whole units.

    One unit is `world * micro` samples: equal micro-batch counts on every rank, so no rank waits
    forever at a collective the others have already left.
    """
    if pad:
        missing = (-len(order)) % unit
        return np.concatenate([order, np.full(missing, PAD_ROW, dtype=np.int64)])
    return order[: len(order) - len(order) % unit]


def rank_batches(order: np.ndarray, world_size: int, rank: int, micro: int) -> list[np.ndarray]:
    """Rank `rank`'s micro-batches (row indices, PAD_ROW for padding) from a fitted order."""
    unit = world_size * micro
    if len(order) % unit:
        raise ValueError(f"order of {len(order)} rows is not a multiple of world*micro={unit}")
    return [
        order[start + rank * micro : start + (rank + 1) * micro]
        for start in range(0, len(order), unit)
    ]


def fill_padding(rows: np.ndarray) -> np.ndarray:
    """Padding rows borrow a real row's content (masked out later); an all-padding batch row 0."""
    is_real = rows != PAD_ROW
    return np.where(is_real, rows, rows[is_real][0] if is_real.any() else 0)
