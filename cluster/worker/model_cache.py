"""Worker side of the model's way to every node: use `model.path` where this node sees it,
otherwise a node-local copy streamed from the head's model server (cluster/head/model_server.py).

The copy is content-addressed: each file is stored once as `blobs/<sha256>` (verified while it
arrives), and a model directory is `models/<digest of the listing>/`, hard links to the blobs
under the listed names, completed by a marker and renamed into place. So the model is fetched
once per node however many workers run there (they take a file lock; the first fetches, the
others find it complete), a later run of the same model reuses it, and a model that changes
only its config fetches only that file.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

import ray

from cluster.actors import ActorHandle, get
from trainer.formats.names import confined

CHUNK_BYTES = 8 << 20
MAX_IN_FLIGHT = 4
COMPLETE = ".complete"
# Hashing a large model on the head, before the first byte moves, may take minutes.
LISTING_TIMEOUT_S = 3600.0
CHUNK_TIMEOUT_S = 300.0


class ModelFetchError(RuntimeError):
    """The streamed model does not match the head's listing (corrupted or cut off)."""


def default_cache_root() -> Path:
    return Path.home() / ".cache" / "ftlaunch" / "models"


def visible_here(model_dir: str) -> bool:
    return (Path(model_dir) / "config.json").is_file()


class ModelSource(Protocol):
    """Where a node without the model gets it from (the head's model server)."""

    def listing(self) -> dict[str, Any]:
        """{digest, files: {name: {bytes, sha256}}}"""
        ...

    def chunks(self, name: str, size: int) -> Iterator[bytes]:
        """The bytes of listed file `name` (`size` long), in order."""
        ...


class HeadModelSource:
    """Reads through the head's ModelServer actor, a few chunks in flight."""

    def __init__(self, server: ActorHandle) -> None:
        self._server = server

    def listing(self) -> dict[str, Any]:
        return get(self._server.listing.remote(), timeout=LISTING_TIMEOUT_S)

    def chunks(self, name: str, size: int) -> Iterator[bytes]:
        pending: list[ray.ObjectRef] = []
        for offset in range(0, size, CHUNK_BYTES):
            pending.append(self._server.read.remote(name, offset, CHUNK_BYTES))
            if len(pending) >= MAX_IN_FLIGHT:
                yield get(pending.pop(0), timeout=CHUNK_TIMEOUT_S)
        for ref in pending:
            yield get(ref, timeout=CHUNK_TIMEOUT_S)


def local_model_dir(source: ModelSource, model_dir: str, cache_root: Path) -> Path:
    """`model_dir` if this node sees it, else this node's complete copy (fetched if missing).

    Raises:
        ModelFetchError: a streamed file does not match its sha256.
        ValueError: a listed name escapes the model directory.
    """
    if visible_here(model_dir):
        return Path(model_dir)
    listing = source.listing()
    models = cache_root / "models"
    target = models / listing["digest"]
    if (target / COMPLETE).is_file():
        return target
    models.mkdir(parents=True, exist_ok=True)
    with (models / f"{listing['digest']}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one fetch per node; the others wait for it
        if not (target / COMPLETE).is_file():
            _assemble(source, listing["files"], cache_root, target)
    return target


def _assemble(
    source: ModelSource, files: dict[str, dict[str, Any]], cache_root: Path, target: Path
) -> None:
    """Fetch the missing blobs, link them under their names, mark complete, rename into place."""
    blobs = cache_root / "blobs"
    blobs.mkdir(parents=True, exist_ok=True)
    staging = target.with_name(f".{target.name}.{uuid.uuid4().hex}")
    try:
        for name, entry in files.items():
            blob = blobs / entry["sha256"]
            if not blob.is_file():
                _fetch(source, name, entry, blob)
            link = confined(staging, name)
            link.parent.mkdir(parents=True, exist_ok=True)
            os.link(blob, link)
        (staging / COMPLETE).write_text("")
        shutil.rmtree(target, ignore_errors=True)  # a leftover without its marker
        os.replace(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _fetch(source: ModelSource, name: str, entry: dict[str, Any], blob: Path) -> None:
    """Stream one file into `blob`, checking its size and sha256 before it is kept."""
    partial = blob.with_name(f".{blob.name}.{uuid.uuid4().hex}")
    digest = hashlib.sha256()
    try:
        with partial.open("wb") as fh:
            for data in source.chunks(name, entry["bytes"]):
                fh.write(data)
                digest.update(data)
            fh.flush()
            os.fsync(fh.fileno())
        if digest.hexdigest() != entry["sha256"] or partial.stat().st_size != entry["bytes"]:
            raise ModelFetchError(
                f"model file {name}: the streamed copy does not match the head's sha256"
            )
        os.replace(partial, blob)
    finally:
        partial.unlink(missing_ok=True)
