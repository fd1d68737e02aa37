"""Row assignment: disjoint across ranks, covers the epoch, equal micro-batch counts per rank; the
order is exactly a permutation, computed window by window in bounded memory."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from trainer.data.order import PAD_ROW, EpochOrder, RankBatches


def _blocks(num_rows: int) -> np.ndarray:
    """Uneven blocks (7, 3, 7, 3, ...) summing to num_rows."""
    sizes, left = [], num_rows
    while left:
        sizes.append(min(left, 7 if len(sizes) % 2 == 0 else 3))
        left -= sizes[-1]
    return np.array(sizes, dtype=np.int64)


def _order(num_rows: int, epoch: int = 0, shuffle: bool = True, window: int = 3) -> EpochOrder:
    return EpochOrder(_blocks(num_rows), epoch, seed=7, shuffle=shuffle, window_blocks=window)


def _assign(num_rows: int, world: int, micro: int, train: bool) -> list[list[np.ndarray]]:
    order = _order(num_rows, shuffle=train)
    return [list(RankBatches(order, 0, world, rank, micro, pad=not train)) for rank in range(world)]


@pytest.mark.parametrize("num_rows", [1, 7, 64, 101, 1000])
@pytest.mark.parametrize("world", [1, 2, 3, 4])
@pytest.mark.parametrize("micro", [1, 4, 16])
def test_evaluation_covers_every_row_exactly_once(num_rows: int, world: int, micro: int) -> None:
    per_rank = _assign(num_rows, world, micro, train=False)
    assert len({len(batches) for batches in per_rank}) == 1  # same number of batches everywhere
    rows = np.concatenate([np.concatenate(b) for b in per_rank])
    real = rows[rows != PAD_ROW]
    assert sorted(real.tolist()) == list(range(num_rows))


@pytest.mark.parametrize("num_rows", [64, 101, 1000])
@pytest.mark.parametrize("world", [1, 2, 3])
def test_training_ranks_are_disjoint_and_only_drop_less_than_one_global_batch(
    num_rows: int, world: int
) -> None:
    micro = 8
    per_rank = _assign(num_rows, world, micro, train=True)
    assert len({len(batches) for batches in per_rank}) == 1
    seen = [set(np.concatenate(b).tolist()) if b else set() for b in per_rank]
    for i in range(world):
        for j in range(i + 1, world):
            assert not seen[i] & seen[j]
    covered = set().union(*seen)
    assert num_rows - len(covered) < world * micro
    assert PAD_ROW not in covered


@pytest.mark.parametrize("window", [1, 2, 3, 50])
@pytest.mark.parametrize("num_rows", [1, 10, 101, 1000])
def test_the_order_is_exactly_a_permutation_and_any_slice_of_it_reads_the_same(
    num_rows: int, window: int
) -> None:
    order = _order(num_rows, window=window)
    whole = order.rows(0, len(order))
    assert np.array_equal(np.sort(whole), np.arange(num_rows))
    rng = np.random.default_rng(0)
    for _ in range(20):  # random access computes only the windows it spans, and agrees
        a, b = sorted(rng.integers(0, num_rows + 1, size=2).tolist())
        assert np.array_equal(_order(num_rows, window=window).rows(a, b), whole[a:b])


def test_shuffle_is_seeded_per_epoch() -> None:
    a0, a0_again, a1 = (_order(100, epoch=e, window=4) for e in (0, 0, 1))
    assert np.array_equal(a0.rows(0, 100), a0_again.rows(0, 100))
    assert not np.array_equal(a0.rows(0, 100), a1.rows(0, 100))


def test_micro_batch_j_of_rank_r_is_a_fixed_slice_of_the_global_order() -> None:
    # After k micro-steps, all ranks together consumed exactly the first k*world*micro samples.
    order = _order(48, window=2)
    batches = RankBatches(order, 0, world_size=3, rank=1, micro=4, pad=False)
    assert np.array_equal(batches[2], order.rows((2 * 3 + 1) * 4, (2 * 3 + 2) * 4))


def test_a_resumed_stream_is_the_tail_of_the_uninterrupted_one() -> None:
    order = _order(1000, window=5)
    full = RankBatches(order, 0, world_size=2, rank=1, micro=4, pad=False)
    resumed = RankBatches(order, 13 * 2 * 4, world_size=2, rank=1, micro=4, pad=False)
    assert len(resumed) == len(full) - 13
    assert all(np.array_equal(a, b) for a, b in zip(resumed, full[13:], strict=True))
    assert len(full[:5]) == 5 and np.array_equal(full[:5][4], full[4])


def test_shuffle_stays_inside_windows_of_blocks() -> None:
    # Consecutive rows of the order come from one window of blocks: a reader holds few blocks.
    order = EpochOrder(np.array([10] * 12), 0, seed=5, shuffle=True, window_blocks=3)
    for w in range(4):
        assert len(set((order.rows(w * 30, (w + 1) * 30) // 10).tolist())) == 3


def test_unshuffled_order_is_sequential() -> None:
    order = EpochOrder(np.array([3, 4]), 0, seed=0, shuffle=False, window_blocks=1)
    assert order.rows(0, 7).tolist() == list(range(7))


def test_a_billion_rows_stay_in_bounded_memory() -> None:
    """10^9 rows in blocks of 1024 (the tokenizer's record batches): a rank's stream, started
    mid-epoch, allocates megabytes; a materialised order would be 8 GB (int64 per row)."""
    block_rows = np.full(10**9 // 1024, 1024, dtype=np.int64)
    tracemalloc.start()
    try:
        order = EpochOrder(block_rows, epoch=3, seed=1, shuffle=True, window_blocks=8)
        batches = RankBatches(order, 10**9 // 2 + 64, world_size=8, rank=5, micro=32, pad=False)
        seen = np.concatenate([batches[j] for j in range(0, 2000)])
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(batches) == (len(order) - 10**9 // 2 - 64) // 256
    assert len(np.unique(seen)) == len(seen) == 2000 * 32 and seen.max() < len(order)
    assert peak < 64 * 2**20, f"peak {peak / 2**20:.1f} MiB"
