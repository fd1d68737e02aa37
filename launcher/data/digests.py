"""The verified-input cache: what ftlaunch learnt about raw input files on earlier runs, so a run
whose inputs did not change neither hashes nor parses them again.

- A file's sha256 is reused while its identity and stamps are the same: device, inode, size,
  mtime and ctime (in ns). ctime is set by the kernel on every write, rename or chmod, and cannot
  be set back by a user (`touch -d`, `cp -p` and `rsync -t` restore mtime only), so a rewritten
  file always misses the cache and is hashed again.
- A train split's label set is kept per content digest of its inputs and the columns read (the
  label set is a function of exactly these), so it is not collected by a parse of every row.

The cache is one JSON file beside the shard cache (written atomically, read as data; anything
unreadable or malformed in it is ignored and rewritten). It only saves work: every entry is
checked against the file system before use, and losing the file costs one hashing pass.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any

from trainer.formats.durable import sha256_file

CACHE_FILE = "verified-inputs.json"
MAX_ENTRIES = 4096  # oldest dropped first (entries keep insertion order)


def file_stamp(path: Path) -> list[int]:
    """What identifies this version of a file without reading it."""
    st = path.stat()
    return [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]


class InputDigests:
    """`digests = InputDigests(cache_root)`; `digests.sha256(path)`, `digests.labels(key)`;
    `digests.save()` once the run's inputs are known."""

    def __init__(self, cache_root: Path) -> None:
        self.path = cache_root / CACHE_FILE
        raw = _read(self.path)
        self._files: dict[str, Any] = _dict(raw.get("files"))
        self._labels: dict[str, Any] = _dict(raw.get("labels"))
        self.hashed = 0  # files hashed by this instance (the rest came from the cache)
        self._changed = False

    def sha256(self, path: Path) -> str:
        """The file's sha256: from the cache when its stamp is unchanged, else by reading it."""
        key = str(path.resolve())
        stamp = file_stamp(path)
        entry = self._files.get(key)
        if isinstance(entry, dict) and entry.get("stamp") == stamp:
            digest = entry.get("sha256")
            if isinstance(digest, str) and len(digest) == 64:
                return digest
        digest = sha256_file(path)
        if file_stamp(path) == stamp:  # not written while it was read: safe to remember
            self._files.pop(key, None)
            self._files[key] = {"stamp": stamp, "sha256": digest}
            self._changed = True
        self.hashed += 1
        return digest

    def labels(self, key: str) -> list[str] | None:
        """The label set remembered for inputs of content `key` (None: not known)."""
        names = self._labels.get(key)
        if isinstance(names, list) and all(isinstance(n, str) for n in names):
            return names
        return None

    def remember_labels(self, key: str, names: list[str]) -> None:
        self._labels.pop(key, None)
        self._labels[key] = names
        self._changed = True

    def save(self) -> None:
        """Write the cache if anything was learnt (best effort: a read-only cache dir only
        means the next run hashes again)."""
        if not self._changed:
            return
        document = {"files": _newest(self._files), "labels": _newest(self._labels)}
        partial = self.path.with_name(f".{CACHE_FILE}.{os.getpid()}")
        with contextlib.suppress(OSError):
            self.path.parent.mkdir(parents=True, exist_ok=True)
            partial.write_text(json.dumps(document))
            os.replace(partial, self.path)
            self._changed = False


def _read(path: Path) -> dict[str, Any]:
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return raw if isinstance(raw, dict) else {}


def _dict(value: Any) -> dict[str, Any]:
    return dict(value) if isinstance(value, dict) else {}


def _newest(entries: dict[str, Any]) -> dict[str, Any]:
    return dict(list(entries.items())[-MAX_ENTRIES:])
