"""Snapshot a checkpoint's state into shared memory, so a separate process can write it.

The training loop is blocked only while tensors are copied into the pool; the saver process
(trainer/engines/saver.py) builds the files from the pool. Each file is described by a list of
`Record`s: what torch.save would write into its zip archive, in the same order (the pickle of
the state's structure, format markers, one record per storage), each as a (segment, offset,
length) range of the pool. The pickle is made here, by torch's own serialiser run against a
recorder instead of a zip writer, so the saver never unpickles anything: it copies bytes.

The pool is a list of memfd segments (anonymous shared memory, gone when both processes are):
allocated at the first save and reused by every later one, a new segment only when a save
outgrows them. A segment's untouched tail costs no memory (pages are backed on first write), so
segments are generous. Tensors are copied compactly (a view into a flat buffer costs its own
size, as DeepSpeed's clone_tensors_for_torch_save does), each to its own storage.
"""

from __future__ import annotations

import copy
import ctypes
import mmap
import os
import pickle
from dataclasses import dataclass
from typing import Any

import torch

ALIGN = 64  # torch's storage alignment in its zip files; also keeps every dtype view aligned
MIN_SEGMENT_BYTES = 1 << 30  # virtual size; only touched pages use memory


@dataclass(frozen=True)
class Record:
    """One entry of a file: `nbytes` at `offset` of pool segment `segment` (-1: empty)."""

    name: str
    segment: int
    offset: int
    nbytes: int

    def as_json(self) -> list[Any]:
        return [self.name, self.segment, self.offset, self.nbytes]


@dataclass(frozen=True)
class FileJob:
    """One file to write: `kind` "torch" (a torch zip archive of `records`) or "raw" (the bytes
    of its one record). `name` is relative to the checkpoint directory."""

    name: str
    kind: str
    records: tuple[Record, ...]

    def as_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "records": [r.as_json() for r in self.records],
        }


@dataclass
class _Segment:
    fd: int
    memory: mmap.mmap
    address: int
    size: int


class SnapshotPool:
    """Shared-memory segments and a bump allocator over them, reset for every checkpoint."""

    def __init__(self, min_segment_bytes: int = MIN_SEGMENT_BYTES) -> None:
        self._min_segment = min_segment_bytes
        self._segments: list[_Segment] = []
        self._segment, self._offset = 0, 0
        self.used_bytes = 0

    @property
    def segment_count(self) -> int:
        return len(self._segments)

    def segment_fd(self, index: int) -> tuple[int, int]:
        """(file descriptor, size) of segment `index`, to hand to the saver."""
        segment = self._segments[index]
        return segment.fd, segment.size

    def reset(self) -> None:
        """The previous snapshot is written: its space is reused from the start."""
        self._segment, self._offset, self.used_bytes = 0, 0, 0

    def allocate(self, nbytes: int) -> tuple[int, int]:
        """(segment, offset) of `nbytes` fresh bytes, aligned to ALIGN."""
        while self._segment < len(self._segments):
            if self._offset + nbytes <= self._segments[self._segment].size:
                break
            self._segment, self._offset = self._segment + 1, 0
        else:
            self._add_segment(nbytes)
        place = (self._segment, self._offset)
        self._offset += -(-nbytes // ALIGN) * ALIGN
        self.used_bytes += nbytes
        return place

    def _add_segment(self, nbytes: int) -> None:
        size = max(self._min_segment, -(-nbytes // mmap.PAGESIZE) * mmap.PAGESIZE)
        fd = os.memfd_create(f"ftlaunch-snapshot-{len(self._segments)}", os.MFD_CLOEXEC)
        os.ftruncate(fd, size)
        memory = mmap.mmap(fd, size)
        anchor = ctypes.c_char.from_buffer(memory)
        address = ctypes.addressof(anchor)
        del anchor  # releases the buffer export; the mapping (and address) lives with `memory`
        self._segments.append(_Segment(fd, memory, address, size))
        self._segment, self._offset = len(self._segments) - 1, 0

    def tensor(self, segment: int, offset: int, dtype: torch.dtype, numel: int) -> torch.Tensor:
        """A 1-d tensor over pool memory, with a storage of its own."""
        memory = self._segments[segment].memory
        return torch.frombuffer(memory, dtype=dtype, count=numel, offset=offset)

    def locate(self, address: int, nbytes: int) -> tuple[int, int] | None:
        """(segment, offset) of a pool range starting at `address`; None outside the pool."""
        for index, segment in enumerate(self._segments):
            if segment.address <= address and address + nbytes <= segment.address + segment.size:
                return index, address - segment.address
        return None

    def put_bytes(self, name: str, data: bytes) -> Record:
        segment, offset = self.allocate(len(data))
        self._segments[segment].memory[offset : offset + len(data)] = data
        return Record(name, segment, offset, len(data))

    def close(self) -> None:
        for segment in self._segments:
            segment.memory.close()  # BufferError while a pool tensor is still referenced
            os.close(segment.fd)
        self._segments.clear()


def snapshot_torch_file(pool: SnapshotPool, state: Any, name: str) -> FileJob:
    """Copy every tensor of `state` into `pool` and describe the torch.save archive of it.

    Raises:
        RuntimeError: torch cannot serialise `state` (what torch.save would raise).
    """
    copied = copy_into_pool(pool, state, {})
    recorder = _Recorder(pool)
    torch.serialization._save(copied, recorder, pickle, torch.serialization.DEFAULT_PROTOCOL, False)
    return FileJob(name, "torch", tuple(recorder.records))


def snapshot_raw_file(pool: SnapshotPool, data: bytes, name: str) -> FileJob:
    return FileJob(name, "raw", (pool.put_bytes(name, data),))


def copy_into_pool(pool: SnapshotPool, item: Any, memo: dict[int, Any]) -> Any:
    """`item` with every tensor replaced by a compact copy in the pool (containers rebuilt,
    anything else kept; a tensor reached twice is copied once)."""
    if id(item) in memo:
        return memo[id(item)]
    if isinstance(item, torch.Tensor):
        out = _pooled(pool, item.detach())
    elif isinstance(item, list):
        out = [copy_into_pool(pool, v, memo) for v in item]
    elif isinstance(item, tuple):
        values = [copy_into_pool(pool, v, memo) for v in item]
        out = type(item)(*values) if hasattr(item, "_fields") else tuple(values)
    elif isinstance(item, dict):
        out = copy.copy(item)
        for key, value in item.items():
            out[key] = copy_into_pool(pool, value, memo)
    else:
        return item
    memo[id(item)] = out
    return out


def _pooled(pool: SnapshotPool, tensor: torch.Tensor) -> torch.Tensor:
    if tensor.layout != torch.strided or tensor.numel() == 0 or type(tensor) is not torch.Tensor:
        # Left as is: the recorder copies whatever storage it references (whole, not compact).
        return tensor
    nbytes = tensor.numel() * tensor.element_size()
    segment, offset = pool.allocate(nbytes)
    copied = pool.tensor(segment, offset, tensor.dtype, tensor.numel()).view(tensor.shape)
    copied.copy_(tensor)
    return copied


class _Recorder:
    """Takes the place of torch's zip writer in `torch.serialization._save`: each record is kept
    as a pool range (storages already in the pool are referenced, any other is copied in)."""

    def __init__(self, pool: SnapshotPool) -> None:
        self._pool = pool
        self.records: list[Record] = []

    def write_record(self, name: str, data: Any, nbytes: int) -> None:
        if isinstance(data, str | bytes):
            raw = data.encode() if isinstance(data, str) else data
            self.records.append(self._pool.put_bytes(name, raw))
            return
        if nbytes == 0:
            self.records.append(Record(name, -1, 0, 0))
            return
        place = self._pool.locate(data.data_ptr(), nbytes) if data.device.type == "cpu" else None
        if place is None:
            place = self._pool.allocate(nbytes)
            target = self._pool.tensor(*place, torch.uint8, nbytes)
            target.copy_(torch.empty(0, dtype=torch.uint8, device=data.device).set_(data))
        self.records.append(Record(name, place[0], place[1], nbytes))
