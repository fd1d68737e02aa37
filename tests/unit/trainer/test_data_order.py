"""Row assignment: disjoint across ranks, covers the epoch, equal micro-batch counts per rank."""

from __future__ import annotations

import numpy as np
import pytest

from trainer.data.order import PAD_ROW, epoch_order, fit_order, rank_batches


def _blocks(num_rows: int) -> np.ndarray:
    """Uneven blocks (7, 3, 7, 3, ...) summing to num_rows."""
    sizes, left = [], num_rows
    while left:
        sizes.append(min(left, 7 if len(sizes) % 2 == 0 else 3))
        left -= sizes[-1]
    return np.array(sizes, dtype=np.int64)


def _assign(
    num_rows: int, world: int, micro: int, train: bool, epoch: int = 0
) -> list[list[np.ndarray]]:
    order = epoch_order(_blocks(num_rows), epoch, seed=7, shuffle=train, window_blocks=3)
    fitted = fit_order(order, world * micro, pad=not train)
    return [rank_batches(fitted, world, rank, micro) for rank in range(world)]


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


def test_shuffle_is_seeded_per_epoch() -> None:
    a0, a0_again, a1 = (
        epoch_order(_blocks(100), e, seed=1, shuffle=True, window_blocks=4) for e in (0, 0, 1)
    )
    assert np.array_equal(a0, a0_again)
    assert not np.array_equal(a0, a1)
    assert sorted(a1.tolist()) == list(range(100))


def test_micro_batch_j_of_rank_r_is_a_fixed_slice_of_the_global_order() -> None:
    # After k micro-steps, all ranks together consumed exactly the first k*world*micro samples.
    order = epoch_order(_blocks(48), 0, seed=3, shuffle=True, window_blocks=2)
    batches = rank_batches(order, world_size=3, rank=1, micro=4)
    assert np.array_equal(batches[2], order[(2 * 3 + 1) * 4 : (2 * 3 + 2) * 4])


def test_unfitted_order_is_refused() -> None:
    with pytest.raises(ValueError, match="multiple of world"):
        rank_batches(np.arange(10), world_size=3, rank=0, micro=2)


def test_shuffle_stays_inside_windows_of_blocks() -> None:
    # Memory is bounded because consecutive rows of the order come from one window of blocks.
    blocks = np.array([10] * 12)
    order = epoch_order(blocks, 0, seed=5, shuffle=True, window_blocks=3)
    for w in range(4):
        window_rows = order[w * 30 : (w + 1) * 30]
        assert len(set((window_rows // 10).tolist())) == 3


def test_unshuffled_order_is_sequential() -> None:
    assert epoch_order(
        np.array([3, 4]), 0, seed=0, shuffle=False, window_blocks=1
    ).tolist() == list(range(7))
