"""Read tokenized Arrow IPC shards inside a worker: disjoint rows per rank, equal steps per rank.

The sample order is one global permutation per epoch (seeded by `seed` and the epoch). Micro-batch
j of rank r is the slice `[(j * world + r) * micro, ... + micro)` of that order, so after k
micro-steps every rank together has consumed exactly the first `k * world * micro` samples: the
stream position is one integer, independent of the world size (what exact resume builds on).
Shards are memory-mapped, so only the rows of the current micro-batch are ever copied.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from trainer.config.manifest import ShardManifest, verify_shards

PAD_ROW = -1


def epoch_order(num_rows: int, epoch: int, seed: int, shuffle: bool) -> np.ndarray:
    """The global sample order of one epoch: a permutation of row indices."""
    if not shuffle:
        return np.arange(num_rows, dtype=np.int64)
    return np.random.default_rng([seed, epoch]).permutation(num_rows).astype(np.int64)


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


@dataclass
class Batch:
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor
    sample_ids: torch.Tensor
    is_real: torch.Tensor  # False for padding rows added to even out evaluation batches

    def model_inputs(self, device: torch.device) -> dict[str, torch.Tensor]:
        return {
            "input_ids": self.input_ids.to(device),
            "attention_mask": self.attention_mask.to(device),
        }

    def num_tokens(self) -> int:
        return int(self.attention_mask[self.is_real].sum())

    def num_samples(self) -> int:
        return int(self.is_real.sum())


class ShardedSplit:
    """One prepared split: a manifest plus memory-mapped IPC shards, read as one table."""

    def __init__(self, directory: str | Path, verify: bool = False) -> None:
        self.directory = Path(directory)
        self.manifest = ShardManifest.read(self.directory)
        if verify:
            verify_shards(self.directory, self.manifest)
        tables = [_map_shard(self.directory / shard.file) for shard in self.manifest.shards]
        self.table = pa.concat_tables(tables).combine_chunks() if len(tables) > 1 else tables[0]
        ids = self.table.column("input_ids").combine_chunks()
        self._offsets = ids.offsets.to_numpy()
        self._values = ids.values.to_numpy()
        self._labels = self.table.column("label").to_numpy()
        self._sample_ids = self.table.column("sample_id").to_numpy()

    @property
    def num_rows(self) -> int:
        return self.table.num_rows

    def labels(self) -> np.ndarray:
        return self._labels

    def epoch_batches(
        self, epoch: int, seed: int, world_size: int, rank: int, micro: int, train: bool
    ) -> list[np.ndarray]:
        """This rank's micro-batches for one pass: shuffled and trimmed for training,
        in order and padded for evaluation (every row exactly once across ranks)."""
        order = epoch_order(self.num_rows, epoch, seed, shuffle=train)
        return rank_batches(
            fit_order(order, world_size * micro, pad=not train), world_size, rank, micro
        )

    def collate(self, rows: np.ndarray, pad_id: int) -> Batch:
        """Gather rows and pad to the longest sequence of this micro-batch (dynamic padding)."""
        is_real = rows != PAD_ROW
        safe = np.where(is_real, rows, 0)
        starts, ends = self._offsets[safe], self._offsets[safe + 1]
        width = int((ends - starts).max())
        input_ids = np.full((len(rows), width), pad_id, dtype=np.int64)
        mask = np.zeros((len(rows), width), dtype=np.int64)
        for i, (start, end) in enumerate(zip(starts, ends, strict=True)):
            input_ids[i, : end - start] = self._values[start:end]
            mask[i, : end - start] = 1
        return Batch(
            input_ids=torch.from_numpy(input_ids),
            attention_mask=torch.from_numpy(mask),
            labels=torch.from_numpy(self._labels[safe].astype(np.int64)),
            sample_ids=torch.from_numpy(np.where(is_real, self._sample_ids[safe], PAD_ROW)),
            is_real=torch.from_numpy(is_real),
        )

    def iter_batches(self, batches: list[np.ndarray]) -> Iterator[Batch]:
        pad_id = self.manifest.pad_token_id
        for rows in batches:
            yield self.collate(rows, pad_id)


def _map_shard(path: Path) -> pa.Table:
    # The table's buffers point into the map, which stays alive as long as they do.
    return pa.ipc.open_file(pa.memory_map(str(path), "r")).read_all()
