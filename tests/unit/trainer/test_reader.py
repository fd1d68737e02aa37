"""The worker-side reader on real prepared shards (uneven blocks across several shards):
exactly-once coverage, equal step counts, exact resume, resume with a different world size."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from launcher.data.sources import SplitSource
from launcher.data.tokenize import TokenizeOptions, prepare_split
from tests.fixtures import keyword_rows, minilm_dir, write_jsonl
from trainer.data.order import PAD_ROW
from trainer.data.split import ShardedSplit
from trainer.formats.shard_stores import LocalShardStore

ROWS, MICRO, SEED = 503, 4, 11


@pytest.fixture(scope="module")
def split_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("reader")
    data = write_jsonl(tmp / "train.jsonl", keyword_rows(ROWS, 4))
    source = SplitSource.single("data.train", data, "text", "label")
    prepared = prepare_split(
        source,
        "train",
        TokenizeOptions(minilm_dir(), 32, ["neg", "pos"], shard_bytes=3000, batch_rows=37),
        tmp / "cache",
    )
    assert len(prepared.manifest.shards) >= 3
    return prepared.directory


def _split(split_dir: Path) -> ShardedSplit:
    return ShardedSplit(LocalShardStore(split_dir), window_blocks=3)


def _ids(split: ShardedSplit, batches: list[np.ndarray]) -> list[list[int]]:
    return [b.sample_ids.tolist() for b in split.iter_batches(batches)]


def _global_steps(
    split_dir: Path, world: int, train: bool, epoch: int = 0, start: int = 0
) -> list[list[int]]:
    """Per global micro-step, the sample ids of all ranks in rank order (what the job consumed)."""
    per_rank = [
        _ids(
            _split(split_dir),
            _split(split_dir).epoch_batches(epoch, SEED, world, r, MICRO, train=train, start=start),
        )
        for r in range(world)
    ]
    assert len({len(r) for r in per_rank}) == 1, "ranks must run the same number of steps"
    return [[i for rank in step for i in rank] for step in zip(*per_rank, strict=True)]


@pytest.mark.parametrize("world", [1, 2, 3])
def test_every_row_exactly_once_per_epoch(split_dir: Path, world: int) -> None:
    steps = _global_steps(split_dir, world, train=False)
    ids = [i for step in steps for i in step if i != PAD_ROW]
    assert (
        hashlib.sha256(str(sorted(ids)).encode()).hexdigest()
        == hashlib.sha256(str(list(range(ROWS))).encode()).hexdigest()
    )

    train_ids = [i for step in _global_steps(split_dir, world, train=True) for i in step]
    assert len(train_ids) == len(set(train_ids))
    assert ROWS - len(train_ids) < world * MICRO  # only the explicit, reported tail is dropped


def test_epochs_reshuffle_and_are_reproducible(split_dir: Path) -> None:
    e0, e0_again, e1 = (_global_steps(split_dir, 2, train=True, epoch=e) for e in (0, 0, 1))
    assert e0 == e0_again and e0 != e1


@pytest.mark.parametrize("resume_step", [1, 7, 30, 62])
def test_resume_at_step_n_sees_exactly_the_uninterrupted_samples(
    split_dir: Path, resume_step: int
) -> None:
    world = 2
    full = _global_steps(split_dir, world, train=True)
    position = resume_step * world * MICRO  # what TrainProgress.samples_seen_in_epoch holds
    resumed = _global_steps(split_dir, world, train=True, start=position)
    assert resumed == full[resume_step:]


@pytest.mark.parametrize(("before", "after"), [(2, 3), (3, 2)])
def test_resume_with_a_different_world_size_neither_loses_nor_repeats(
    split_dir: Path, before: int, after: int
) -> None:
    steps_before = 20
    first = _global_steps(split_dir, before, train=True)[:steps_before]
    position = steps_before * before * MICRO
    second = _global_steps(split_dir, after, train=True, start=position)
    consumed = [i for step in first + second for i in step]
    assert len(consumed) == len(set(consumed))
    assert ROWS - len(consumed) < after * MICRO
    # and the same global sample order as one uninterrupted single-rank pass
    single = [i for step in _global_steps(split_dir, 1, train=True) for i in step]
    assert consumed == single[: len(consumed)]


def test_padding_rows_are_masked(split_dir: Path) -> None:
    split = _split(split_dir)
    last = list(split.iter_batches(split.epoch_batches(0, 0, 3, 2, MICRO, train=False)))[-1]
    assert (~last.is_real).any() and (last.sample_ids[~last.is_real] == PAD_ROW).all()
    assert last.num_samples() == int(last.is_real.sum())


def test_dynamic_padding_to_the_longest_in_the_batch(split_dir: Path) -> None:
    split = _split(split_dir)
    batch = next(iter(split.iter_batches(split.epoch_batches(0, SEED, 1, 0, MICRO, train=True))))
    lengths = batch.attention_mask.sum(1)
    assert batch.input_ids.shape[1] == int(lengths.max())
    pad = split.manifest.pad_token_id
    for row, n in zip(batch.input_ids, lengths, strict=True):
        assert (row[n:] == pad).all() and row[0] == 101 and row[n - 1] == 102


def test_reader_errors_surface_in_the_consumer(split_dir: Path) -> None:
    split = _split(split_dir)
    bad = [np.array([ROWS + 10_000] * MICRO)]
    with pytest.raises(IndexError):
        list(split.iter_batches(bad))


def test_a_micro_batch_of_only_padding_still_collates(split_dir: Path) -> None:
    split = _split(split_dir)
    (batch,) = split.iter_batches([np.full(MICRO, PAD_ROW)])
    assert batch.num_samples() == 0 and (batch.sample_ids == PAD_ROW).all()
