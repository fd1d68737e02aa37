"""Causal-LM batches from prepared shards: input ids, token labels (-100: no loss) and, for packed
rows, position ids that restart per example.

Order, rank assignment and the resumable stream position are ShardedSplit's, unchanged: a packed
row is one row of the split. Only the block contents and the collation differ.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from trainer.data.order import PAD_ROW
from trainer.data.split import Batch, ShardedSplit
from trainer.formats.shards import IGNORE_INDEX


@dataclass
class CausalBatch(Batch):
    """`labels` are token labels aligned with input_ids (the loss shifts them by one);
    `attention_mask` is 1 on real tokens (also what throughput counts)."""

    position_ids: torch.Tensor
    packed: bool

    def model_inputs(self, device: torch.device) -> dict[str, Any]:
        """Packed rows: position ids and no 2D mask, so transformers builds a block-diagonal
        causal mask from the position restarts (masking_utils.find_packed_sequence_indices);
        the padding at the end of a row restarts positions too, so it is a segment of its own that
        no real token attends to. Unpacked rows: the usual right-padding mask."""
        inputs: dict[str, Any] = {"input_ids": self.input_ids.to(device), "use_cache": False}
        if self.packed:
            inputs["position_ids"] = self.position_ids.to(device)
        else:
            inputs["attention_mask"] = self.attention_mask.to(device)
        return inputs

    def loss_tokens(self) -> int:
        return int((self.labels[self.is_real] != IGNORE_INDEX).sum())


@dataclass(frozen=True)
class _CausalBlock:
    offsets: np.ndarray
    values: np.ndarray
    labels: np.ndarray
    positions: np.ndarray
    sample_ids: np.ndarray


class CausalSplit(ShardedSplit):
    """A prepared causal-LM split (see launcher/data/causal.py for the row layout)."""

    @property
    def packed(self) -> bool:
        return self.manifest.packing

    def collate(self, rows: np.ndarray, pad_id: int) -> CausalBatch:
        return self._collate(rows, self._blocks_for(rows), pad_id)

    def _collate(self, rows: np.ndarray, blocks: dict, pad_id: int) -> CausalBatch:
        is_real = rows != PAD_ROW
        ids, labels, positions = [], [], []
        sample_ids = np.empty(len(rows), dtype=np.int64)
        for i, (block_id, local) in enumerate(self.locate(rows)):
            block = blocks[block_id]
            span = slice(block.offsets[local], block.offsets[local + 1])
            ids.append(block.values[span])
            labels.append(block.labels[span])
            positions.append(block.positions[span])
            sample_ids[i] = block.sample_ids[local]
        lengths = np.fromiter((len(x) for x in ids), dtype=np.int64, count=len(ids))
        width = int(lengths.max())
        mask = np.arange(width)[None, :] < lengths[:, None]
        input_ids = np.full(mask.shape, pad_id, dtype=np.int64)
        input_ids[mask] = np.concatenate(ids)
        label_ids = np.full(mask.shape, IGNORE_INDEX, dtype=np.int64)
        label_ids[mask] = np.concatenate(labels)
        label_ids[~is_real] = IGNORE_INDEX  # evaluation padding rows score nothing
        # Padding restarts at position 0: its own segment when packed, ignored otherwise.
        position_ids = np.arange(width)[None, :] - lengths[:, None]
        position_ids[mask] = np.concatenate(positions)
        position_ids = np.where(mask, position_ids, position_ids.clip(min=0))
        return CausalBatch(
            input_ids=torch.from_numpy(input_ids),
            labels=torch.from_numpy(label_ids),
            attention_mask=torch.from_numpy(mask.astype(np.int64)),
            position_ids=torch.from_numpy(position_ids.astype(np.int64)),
            sample_ids=torch.from_numpy(np.where(is_real, sample_ids, PAD_ROW)),
            is_real=torch.from_numpy(is_real),
            packed=self.packed,
        )

    def _decode_block(self, batch: pa.RecordBatch) -> _CausalBlock:
        ids = batch.column("input_ids")
        return _CausalBlock(
            offsets=ids.offsets.to_numpy(),
            values=ids.values.to_numpy(),
            labels=batch.column("labels").values.to_numpy(),
            positions=batch.column("position_ids").values.to_numpy(),
            sample_ids=batch.column("sample_id").to_numpy(),
        )

    def prompts(self, count: int) -> list[list[int]]:
        """Up to `count` generation prompts from the first rows: each example's tokens before its
        first scored token (for text, where everything is scored, its first half)."""
        found: list[list[int]] = []
        row = 0
        while len(found) < count and row < self.num_rows:
            batch = self.collate(np.array([row]), self.manifest.pad_token_id)
            ids, labels = batch.input_ids[0].tolist(), batch.labels[0].tolist()
            starts = [i for i, p in enumerate(batch.position_ids[0].tolist()) if p == 0]
            for start, end in zip(starts, [*starts[1:], len(ids)], strict=True):
                scored = [i for i in range(start + 1, end) if labels[i] != IGNORE_INDEX]
                cut = scored[0] if scored and scored[0] > start + 1 else start + (end - start) // 2
                if cut > start and len(found) < count:
                    found.append(ids[start:cut])
            row += 1
        return found
