"""Stream tokenized Arrow shards inside a worker: disjoint rows per rank, equal steps per rank,
bounded memory, and a sample order that is a pure function of (seed, epoch) (trainer/data/order.py).
"""

from __future__ import annotations

import queue
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import pyarrow as pa
import torch

from trainer.data.order import PAD_ROW, EpochOrder, RankBatches, fill_padding
from trainer.protocols import ShardStore

T = TypeVar("T")
DEFAULT_WINDOW_BLOCKS = 8
PREFETCH_BATCHES = 4


@dataclass
class Batch:
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor
    sample_ids: torch.Tensor
    is_real: torch.Tensor  # False for padding rows added to even out evaluation batches

    def model_inputs(self, device: torch.device) -> dict[str, Any]:
        return {
            "input_ids": self.input_ids.to(device),
            "attention_mask": self.attention_mask.to(device),
        }

    def num_tokens(self) -> int:
        return int(self.attention_mask[self.is_real].sum())

    def num_slots(self) -> int:
        """Token positions computed for real rows (real tokens plus padding)."""
        return int(self.is_real.sum()) * self.input_ids.shape[1]

    def num_samples(self) -> int:
        return int(self.is_real.sum())


@dataclass(frozen=True)
class _Block:
    offsets: np.ndarray
    values: np.ndarray
    labels: np.ndarray
    sample_ids: np.ndarray


class ShardedSplit:
    """One prepared split, read block by block from a ShardStore through a small LRU cache."""

    def __init__(self, store: ShardStore, window_blocks: int = DEFAULT_WINDOW_BLOCKS) -> None:
        self.store = store
        self.manifest = store.read_manifest()
        self.window_blocks = window_blocks
        self._block_key = [
            (s.file, i) for s in self.manifest.shards for i in range(len(s.batch_rows))
        ]
        self.block_rows = np.array(
            [n for s in self.manifest.shards for n in s.batch_rows], dtype=np.int64
        )
        self._block_start = np.concatenate([[0], np.cumsum(self.block_rows)[:-1]]).astype(np.int64)
        # Two windows: a micro-batch that straddles a window boundary needs blocks of both.
        self._cache: OrderedDict[int, _Block] = OrderedDict()
        self._cache_blocks = 2 * window_blocks + 1

    @property
    def num_rows(self) -> int:
        return self.manifest.total_rows

    def majority_label(self) -> int:
        return int(np.argmax(self.manifest.label_counts))

    def epoch_batches(
        self,
        epoch: int,
        seed: int,
        world_size: int,
        rank: int,
        micro: int,
        train: bool,
        start: int = 0,
    ) -> RankBatches:
        """This rank's micro-batches from stream position `start` to the end of the epoch:
        shuffled and trimmed for training; in order and padded for evaluation (every row once).
        Each is computed when asked for (trainer/data/order.py), never the whole epoch at once."""
        order = EpochOrder(
            self.block_rows, epoch, seed, shuffle=train, window_blocks=self.window_blocks
        )
        return RankBatches(order, start, world_size, rank, micro, pad=not train)

    def collate(self, rows: np.ndarray, pad_id: int) -> Batch:
        """Gather rows and pad to the longest sequence of this micro-batch (dynamic padding)."""
        return self._collate(rows, self._blocks_for(rows), pad_id)

    def iter_batches(
        self, batches: Sequence[np.ndarray], prefetch: int = PREFETCH_BATCHES
    ) -> Iterator[Batch]:
        """Collated batches. A background thread reads the blocks `prefetch` micro-batches ahead
        (I/O, which releases the GIL); collation stays in the consuming thread, because it is
        CPU-bound numpy work that a second Python thread would only slow down."""
        pad_id = self.manifest.pad_token_id
        if prefetch <= 0:
            return (self.collate(rows, pad_id) for rows in batches)
        ahead = _prefetched(((rows, self._blocks_for(rows)) for rows in batches), prefetch)
        return (self._collate(rows, blocks, pad_id) for rows, blocks in ahead)

    def _blocks_for(self, rows: np.ndarray) -> dict[int, _Block]:
        needed = np.unique(self._block_of(fill_padding(rows)))
        return {int(b): self._block(int(b)) for b in needed}

    def _block_of(self, rows: np.ndarray) -> np.ndarray:
        return np.searchsorted(self._block_start, rows, side="right") - 1

    def locate(self, rows: np.ndarray) -> list[tuple[int, int]]:
        """(block id, row inside the block) of each row; padding rows point at a real row."""
        safe = fill_padding(rows)
        block_ids = self._block_of(safe)
        local = safe - self._block_start[block_ids]
        return list(zip(block_ids.tolist(), local.tolist(), strict=True))

    def _collate(self, rows: np.ndarray, blocks: dict[int, _Block], pad_id: int) -> Batch:
        # One cheap slice per row and a single masked write: per-row numpy slicing beats
        # vectorising per block, because shuffled rows spread over many blocks.
        is_real = rows != PAD_ROW
        sequences = []
        labels = np.empty(len(rows), dtype=np.int64)
        sample_ids = np.empty(len(rows), dtype=np.int64)
        for i, (block_id, local) in enumerate(self.locate(rows)):
            block = blocks[block_id]
            sequences.append(block.values[block.offsets[local] : block.offsets[local + 1]])
            labels[i] = block.labels[local]
            sample_ids[i] = block.sample_ids[local]
        lengths = np.fromiter((len(seq) for seq in sequences), dtype=np.int64, count=len(sequences))
        mask = np.arange(int(lengths.max()))[None, :] < lengths[:, None]
        input_ids = np.full(mask.shape, pad_id, dtype=np.int64)
        input_ids[mask] = np.concatenate(sequences)
        return Batch(
            input_ids=torch.from_numpy(input_ids),
            attention_mask=torch.from_numpy(mask.astype(np.int64)),
            labels=torch.from_numpy(labels),
            sample_ids=torch.from_numpy(np.where(is_real, sample_ids, PAD_ROW)),
            is_real=torch.from_numpy(is_real),
        )

    def _block(self, block_id: int) -> _Block:
        block = self._cache.get(block_id)
        if block is not None:
            self._cache.move_to_end(block_id)
            return block
        shard_file, batch_index = self._block_key[block_id]
        block = self._decode_block(self.store.read_block(shard_file, batch_index))
        self._cache[block_id] = block
        if len(self._cache) > self._cache_blocks:
            self._cache.popitem(last=False)
        return block

    def _decode_block(self, batch: pa.RecordBatch) -> _Block:
        """One record batch as numpy columns (subclasses decode their own row layout)."""
        ids = batch.column("input_ids")
        return _Block(
            offsets=ids.offsets.to_numpy(),
            values=ids.values.to_numpy(),
            labels=batch.column("label").to_numpy(),
            sample_ids=batch.column("sample_id").to_numpy(),
        )


_DONE = object()


def _prefetched(source: Iterator[T], depth: int) -> Iterator[T]:
    """Run `source` in a daemon thread, at most `depth` items ahead (backpressure by a bounded queue)."""
    items: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def produce() -> None:
        try:
            for item in source:
                while not stop.is_set():
                    try:
                        items.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            items.put(_DONE)
        except BaseException as exc:  # handed to the consumer, raised there
            items.put(exc)

    thread = threading.Thread(target=produce, name="ftlaunch-prefetch", daemon=True)
    thread.start()
    try:
        while (item := items.get()) is not _DONE:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()


class TimedIterator:
    """Wraps an iterator and accumulates the time spent waiting for each item (data_wait_s)."""

    def __init__(self, source: Iterator[Batch]) -> None:
        self._source = source
        self.wait_s = 0.0

    def __iter__(self) -> TimedIterator:
        return self

    def __next__(self) -> Batch:
        started = time.perf_counter()
        try:
            return next(self._source)
        finally:
            self.wait_s += time.perf_counter() - started
