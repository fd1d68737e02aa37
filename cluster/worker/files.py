"""Worker-side ArtifactSink: files go to the head's collector in bounded chunks."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import ray

from cluster.actors import ActorHandle, get

CHUNK_BYTES = 4 << 20
# Chunks sent but not yet written on the head: bounds memory to MAX_IN_FLIGHT x CHUNK_BYTES.
MAX_IN_FLIGHT = 4


class CollectorSink:
    """Worker-side ArtifactSink: streams files to the head in CHUNK_BYTES pieces.

    At most MAX_IN_FLIGHT chunks are in flight, so neither side holds a whole file in memory.
    """

    def __init__(self, collector: ActorHandle, chunk_bytes: int = CHUNK_BYTES) -> None:
        self._collector = collector
        self._chunk_bytes = chunk_bytes

    def put_dir(self, local_dir: Path, name: str) -> None:
        for path in sorted(p for p in local_dir.rglob("*") if p.is_file()):
            self.put_file(path, f"{name}/{path.relative_to(local_dir).as_posix()}")

    def put_file(self, local_file: Path, name: str) -> None:
        self.stream_file(local_file, get(self._collector.begin_file.remote(name)))

    def stream_file(self, local_file: Path, handle: str) -> None:
        digest = hashlib.sha256()
        in_flight: list[ray.ObjectRef] = []
        with local_file.open("rb") as fh:
            while True:
                chunk = np.empty(self._chunk_bytes, dtype=np.uint8)
                size = fh.readinto(chunk.data)
                if not size:
                    break
                chunk = chunk[:size]
                # A numpy array travels through the object store once and the collector reads it
                # in place (zero-copy); bytes would be copied again on the receiving side.
                in_flight.append(self._collector.write_chunk.remote(handle, chunk))
                digest.update(chunk.data)  # releases the GIL: overlaps with Ray's send
                if len(in_flight) >= MAX_IN_FLIGHT:
                    get(in_flight.pop(0))
        get(in_flight)
        get(self._collector.end_file.remote(handle, digest.hexdigest()))
