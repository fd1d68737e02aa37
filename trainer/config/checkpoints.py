"""The on-disk checkpoint format on the head node, and its atomic commit.

    checkpoints/
      .tmp-step-40/          being written: never read by resume
      step-40/               complete: every file listed with size and sha256 in manifest.json,
        manifest.json        plus the training state (step, epoch, stream position, world size,
        COMPLETE             config fingerprint); COMPLETE is written last, then the rename

Shared by the head-side collector (cluster/) and plain local runs (trainer/), torch-free.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

from trainer.config.durable import fsync_path, replace_atomically, write_synced
from trainer.config.manifest import sha256_file

CHECKPOINT_MANIFEST = "manifest.json"
COMPLETE_MARKER = "COMPLETE"
STAGING_PREFIX = ".tmp-"
TRASH_PREFIX = ".trash-"


class CorruptCheckpointError(ValueError):
    """A committed checkpoint whose files do not match its manifest."""


def step_tag(step: int) -> str:
    return f"step-{step}"


class CheckpointStore:
    """Checkpoints under one directory: stage, commit atomically, list, verify, prune."""

    def __init__(self, root: str | Path, keep_last: int = 2) -> None:
        self.root = Path(root)
        self.keep_last = keep_last

    def staging_dir(self, tag: str) -> Path:
        path = self.root / f"{STAGING_PREFIX}{tag}"
        path.mkdir(parents=True, exist_ok=True)
        return path

    def commit(
        self, tag: str, state: dict[str, Any], known_sha256: dict[str, str] | None = None
    ) -> Path:
        """Checksum, fsync and publish `.tmp-<tag>` as `<tag>`; then prune beyond keep_last.

        `known_sha256` maps file names to digests already computed while receiving them (the
        collector hashes every transferred chunk as it writes it), so they are not read twice.
        """
        staging = self.root / f"{STAGING_PREFIX}{tag}"
        files = sorted(p for p in staging.rglob("*") if p.is_file())
        known = known_sha256 or {}
        listing = {}
        for path in files:
            name = path.relative_to(staging).as_posix()
            digest = known.get(name) or sha256_file(path)
            listing[name] = {"bytes": path.stat().st_size, "sha256": digest}
        manifest = {"tag": tag, "files": listing, "state": state, "committed_at": time.time()}
        write_synced(staging / CHECKPOINT_MANIFEST, json.dumps(manifest, indent=1, sort_keys=True))
        for path in files:
            fsync_path(path)
        write_synced(staging / COMPLETE_MARKER, tag)
        fsync_path(staging)
        final = self.root / tag
        replace_atomically(staging, final)  # a restart re-saving the same step replaces it
        self.prune()
        return final

    def complete(self) -> list[tuple[str, dict[str, Any]]]:
        """(tag, manifest) of every complete checkpoint, oldest commit first."""
        found = []
        for path in self.root.glob("step-*"):
            if (path / COMPLETE_MARKER).is_file() and (path / CHECKPOINT_MANIFEST).is_file():
                try:
                    found.append((path.name, json.loads((path / CHECKPOINT_MANIFEST).read_text())))
                except (OSError, json.JSONDecodeError):
                    continue  # unreadable manifest: not a usable checkpoint
        return sorted(found, key=lambda item: item[1]["committed_at"])

    def latest(self, run_id: str | None = None) -> tuple[str, dict[str, Any]] | None:
        """The newest complete checkpoint (optionally: written by run `run_id`)."""
        candidates = [
            c for c in self.complete() if run_id is None or c[1]["state"].get("run_id") == run_id
        ]
        return candidates[-1] if candidates else None

    def verify(self, tag: str) -> dict[str, Any]:
        """The manifest of `tag` after checking every file's size and sha256.

        Raises:
            CorruptCheckpointError: naming the first missing or corrupted file.
        """
        directory = self.root / tag
        if not (directory / COMPLETE_MARKER).is_file():
            raise CorruptCheckpointError(
                f"{directory}: not a complete checkpoint (no {COMPLETE_MARKER})"
            )
        manifest = json.loads((directory / CHECKPOINT_MANIFEST).read_text())
        for name, entry in manifest["files"].items():
            path = directory / name
            if (
                not path.is_file()
                or path.stat().st_size != entry["bytes"]
                or sha256_file(path) != entry["sha256"]
            ):
                raise CorruptCheckpointError(
                    f"{path}: does not match the checkpoint manifest (corrupted or truncated)"
                )
        return manifest

    def prune(self) -> None:
        """Delete complete checkpoints beyond keep_last, oldest first.

        Each is renamed away before it is deleted, so a crash halfway through a deletion never
        leaves a `step-N` that looks complete but has lost files.
        """
        complete = self.complete()
        for tag, _ in complete[: max(len(complete) - self.keep_last, 0)]:
            trash = self.root / f"{TRASH_PREFIX}{tag}"
            shutil.rmtree(trash, ignore_errors=True)
            (self.root / tag).rename(trash)
            shutil.rmtree(trash, ignore_errors=True)

    def discard_incomplete(self) -> list[str]:
        """Remove what a crashed save or prune left behind (staging and trash directories).

        Only safe while no save is in flight: the collector calls it when a worker group starts.
        Returns the names removed.
        """
        if not self.root.is_dir():
            return []
        leftovers = [
            p for p in self.root.iterdir() if p.name.startswith((STAGING_PREFIX, TRASH_PREFIX))
        ]
        for path in leftovers:
            shutil.rmtree(path, ignore_errors=True)
        return sorted(p.name for p in leftovers)
