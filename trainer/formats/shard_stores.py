"""Where a prepared split's shards are read from: a local path or a pyarrow.fs URI (and, supplied
by `cluster/worker/`, the head node). All hand out single IPC record batches (the ShardStore
protocol in trainer/protocols.py), the unit the reader loads, so memory stays bounded by the
reader's window whatever the dataset size. Torch-free: the head's shard server uses them too.
"""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs

from trainer.formats.shards import (
    MANIFEST_NAME,
    CorruptShardError,
    ShardManifest,
    check_shard_sizes,
    is_remote_uri,
    read_manifest_uri,
    verify_shard_sha,
)


class _BatchFileStore:
    """Keeps one open IPC file reader per shard and hands out single record batches; subclasses
    say how a shard is opened. The lock is there because the prefetch thread and the main thread
    may both read."""

    def __init__(self, manifest: ShardManifest) -> None:
        self._manifest = manifest
        self._batches = {s.file: len(s.batch_rows) for s in manifest.shards}
        self._readers: dict[str, pa.ipc.RecordBatchFileReader] = {}
        self._lock = threading.Lock()

    def read_manifest(self) -> ShardManifest:
        return self._manifest

    def read_block(self, shard_file: str, batch_index: int) -> pa.RecordBatch:
        """Record batch `batch_index` of a shard the manifest lists (the head's shard server
        hands these to other processes: nothing else is ever opened).

        Raises:
            KeyError: a shard or batch the manifest does not list.
            CorruptShardError: the shard's bytes are not the manifest's (checked at first use).
        """
        batches = self._batches.get(shard_file)
        if batches is None or not 0 <= batch_index < batches:
            raise KeyError(f"{shard_file} batch {batch_index}: not in the split's manifest")
        with self._lock:
            reader = self._readers.get(shard_file)
            if reader is None:
                reader = self._open(shard_file)
                self._readers[shard_file] = reader
            return reader.get_batch(batch_index)

    def _open(self, shard_file: str) -> pa.ipc.RecordBatchFileReader:
        raise NotImplementedError


class LocalShardStore(_BatchFileStore):
    """Shards on a local disk. Reads with pread rather than mmap: touched mmap pages would count
    towards the process RSS until unmapped, and a long epoch touches every page.

    Verified lazily: sizes when opened (no byte read), and each shard's sha256 the first time one
    of its blocks is asked for, before any of its rows is handed out. So training starts after
    hashing the first shard, not the whole split, and a split read partly (a capped step count,
    one rank's blocks) is hashed only as far as it is read.
    """

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        super().__init__(ShardManifest.read(self.directory))
        check_shard_sizes(self.directory, self._manifest)
        self._shards = {s.file: s for s in self._manifest.shards}

    def _open(self, shard_file: str) -> pa.ipc.RecordBatchFileReader:
        path = self.directory / shard_file
        verify_shard_sha(path, self._shards[shard_file])
        return pa.ipc.open_file(pa.OSFile(str(path), "rb"))


class FsShardStore(_BatchFileStore):
    """Shards behind a pyarrow.fs URI (s3://, gs://, hdfs://, file://).

    Each shard's sha256 is checked the first time it is opened (a streamed read of the whole
    file), so a corrupted remote shard fails loudly before any of its rows are trained on.
    """

    def __init__(self, uri: str) -> None:
        self.filesystem, self.root = pafs.FileSystem.from_uri(uri)
        self.uri = uri
        super().__init__(read_manifest_uri(uri))
        self._shas = {s.file: s.sha256 for s in self._manifest.shards}

    def _open(self, shard_file: str) -> pa.ipc.RecordBatchFileReader:
        path = f"{self.root}/{shard_file}"
        digest = hashlib.sha256()
        with self.filesystem.open_input_stream(path) as fh:
            while chunk := fh.read(8 << 20):
                digest.update(chunk)
        if digest.hexdigest() != self._shas[shard_file]:
            where = f"{self.uri.split('://', 1)[0]}://{path}"  # without the URI's query options
            raise CorruptShardError(
                f"{where}: sha256 does not match the manifest (corrupted shard)"
            )
        return pa.ipc.open_file(self.filesystem.open_input_file(path))


def open_store(location: str) -> LocalShardStore | FsShardStore:
    """A store for `location`: a pyarrow.fs URI or a local directory.

    Raises:
        FileNotFoundError: a local directory that does not exist on this node.
    """
    if is_remote_uri(location):
        return FsShardStore(location)
    if not (Path(location) / MANIFEST_NAME).is_file():
        raise FileNotFoundError(f"{location}: no {MANIFEST_NAME} on this node")
    return LocalShardStore(location)


def serialize_block(batch: pa.RecordBatch) -> bytes:
    """IPC-encode one record batch (for sending it between nodes)."""
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, batch.schema) as writer:
        writer.write_batch(batch)
    return sink.getvalue().to_pybytes()


def deserialize_block(data: bytes) -> pa.RecordBatch:
    return pa.ipc.open_stream(pa.py_buffer(data)).read_next_batch()
