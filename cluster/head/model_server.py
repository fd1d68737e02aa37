"""Serve the model directory from the head to workers on nodes that cannot see `model.path`.

Like the shard server (cluster/head/shard_server.py), a Ray actor pinned to the head, asked for
one bounded chunk per call. It serves only the files of its listing: the regular files under
the model directory when the listing is first asked for, each with its size and sha256. A
name outside the listing is refused whatever it resolves to, so a worker can read nothing
else of the head's disk. The listing is computed on first use, so a run whose nodes all see the
model never hashes it.
"""

from __future__ import annotations

import hashlib
import json
import threading
from pathlib import Path
from typing import Any

import ray

from cluster.actors import ActorHandle

CHUNK_BYTES = 8 << 20


def list_model_files(model_dir: Path) -> dict[str, dict[str, Any]]:
    """Relative name -> {bytes, sha256} of every regular file under `model_dir`, hidden files and
    directories (`.cache`, `.git`) left out. Symlinks are followed (a Hugging Face cache snapshot
    links to its blobs)."""
    files = {}
    for path in sorted(model_dir.rglob("*")):
        name = path.relative_to(model_dir).as_posix()
        if any(part.startswith(".") for part in name.split("/")) or not path.is_file():
            continue
        digest = hashlib.sha256()
        with path.open("rb") as fh:
            while chunk := fh.read(CHUNK_BYTES):
                digest.update(chunk)
        files[name] = {"bytes": path.stat().st_size, "sha256": digest.hexdigest()}
    return files


def listing_digest(files: dict[str, dict[str, Any]]) -> str:
    """One sha256 for a listing: names and contents. Equal digests, equal directories."""
    return hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()


class ModelServer:
    """Plain class (tested without Ray); `model_server_actor()` runs it on the head."""

    def __init__(self, model_dir: str) -> None:
        self._root = Path(model_dir)
        self._files: dict[str, dict[str, Any]] | None = None
        self._lock = threading.Lock()
        self.bytes_served = 0

    def listing(self) -> dict[str, Any]:
        """{digest, files: {name: {bytes, sha256}}}, computed once."""
        with self._lock:
            if self._files is None:
                self._files = list_model_files(self._root)
            files = self._files
        return {"digest": listing_digest(files), "files": files}

    def read(self, name: str, offset: int, length: int) -> bytes:
        """`length` bytes of listed file `name` from `offset` (at most CHUNK_BYTES).

        Raises:
            KeyError: `name` is not in the listing.
        """
        entry = self.listing()["files"].get(name)
        if entry is None:
            raise KeyError(f"{name!r}: not a file of the model directory")
        with (self._root / name).open("rb") as fh:
            fh.seek(offset)
            data = fh.read(min(length, CHUNK_BYTES))
        with self._lock:
            self.bytes_served += len(data)
        return data

    def stats(self) -> dict[str, int]:
        return {"model_streamed_bytes": self.bytes_served}


def model_server_actor(model_dir: str) -> ActorHandle:
    """Start the server on this (the driver's, i.e. head's) node for `model_dir`."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    here = ray.get_runtime_context().get_node_id()
    actor_cls: ActorHandle = ray.remote(ModelServer)
    strategy = NodeAffinitySchedulingStrategy(node_id=here, soft=False)
    return actor_cls.options(num_cpus=0, max_concurrency=8, scheduling_strategy=strategy).remote(
        model_dir
    )
