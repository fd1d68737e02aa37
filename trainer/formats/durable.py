"""Crash-safe file operations shared by everything that publishes results: prepared shards,
checkpoints and the run directory. Torch-free, so the launcher may use them too."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path


def fsync_path(path: Path) -> None:
    """Flush a file's (or a directory's entries') data to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_synced(path: Path, text: str) -> None:
    with path.open("w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())


def replace_atomically(source: Path, target: Path) -> None:
    """Put `source` at `target` with renames only, replacing whatever was there.

    A directory cannot be renamed over a non-empty one, so an existing target is first renamed
    aside and deleted only once the new one is in place; if the final rename fails, the old one
    is put back rather than leaving nothing.
    """
    aside = target.with_name(f".{target.name}.old-{os.getpid()}")
    if target.exists():
        os.rename(target, aside)
    try:
        os.rename(source, target)
    except OSError:
        if aside.exists() and not target.exists():
            os.rename(aside, target)
        raise
    if aside.is_dir():
        shutil.rmtree(aside, ignore_errors=True)
    elif aside.exists():
        aside.unlink()
    fsync_path(target.parent)


def sha256_file(path: Path, block: int = 1 << 20) -> str:
    """The hex sha256 of a file, read in `block`-byte pieces."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(block):
            digest.update(chunk)
    return digest.hexdigest()
