"""Receive files from workers on the head, in bounded chunks: each file is written next to its
target as `.<name>.<handle>.part`, hashed while it arrives, fsynced, and renamed into place only
when its sha256 matches what the sender computed. Names are confined below their root."""

from __future__ import annotations

import hashlib
import os
import uuid
from pathlib import Path
from typing import Any

from trainer.formats.paths import confined


class FileReceiver:
    def __init__(self) -> None:
        self._open: dict[str, tuple[Path, Any, Any]] = {}

    def begin(self, root: Path, name: str) -> str:
        """Start receiving `root/name`; returns the handle the chunks are sent with."""
        target = confined(root, name)
        target.parent.mkdir(parents=True, exist_ok=True)
        handle = uuid.uuid4().hex
        partial = target.with_name(f".{target.name}.{handle}.part")
        self._open[handle] = (target, partial.open("wb"), hashlib.sha256())
        return handle

    def write_chunk(self, handle: str, data: bytes) -> None:
        _, fh, digest = self._open[handle]
        fh.write(data)
        digest.update(data)

    def end(self, handle: str, sha256: str) -> Path:
        """Finish a file: fsync, check its sha256, rename it into place; returns the target.

        Raises:
            OSError: the bytes that arrived do not match the sender's sha256 (nothing is kept).
        """
        target, fh, digest = self._open.pop(handle)
        partial = Path(fh.name)
        fh.flush()
        os.fsync(fh.fileno())
        fh.close()
        if digest.hexdigest() != sha256:
            partial.unlink(missing_ok=True)
            raise OSError(f"{target}: transfer corrupted (sha256 mismatch)")
        os.replace(partial, target)
        return target
