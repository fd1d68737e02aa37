"""Commit checkpoints on the head once every rank's files are in.

Ranks on the head write straight into a checkpoint's staging directory; ranks on other nodes
stream their files through the FileReceiver. Each rank then says it is done (`submitted`);
rank 0 also brings the training state, which says how many ranks there are. When all have
submitted, the CheckpointStore commits atomically (trainer/formats/checkpoints.py). On resume,
remote ranks read committed files back in chunks, each checkpoint verified once per run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cluster.head.files import FileReceiver
from trainer.formats.checkpoints import CheckpointStore
from trainer.formats.paths import confined


class CheckpointCommitter:
    def __init__(self, store: CheckpointStore, receiver: FileReceiver) -> None:
        self.store = store
        self._receiver = receiver
        self._files: dict[str, tuple[str, str]] = {}  # handle -> (tag, name)
        self._received: dict[str, dict[str, str]] = {}  # tag -> name -> sha256
        self._submitted: dict[str, tuple[set[int], dict[str, Any]]] = {}  # ranks, rank 0's state
        self._committed: set[str] = set()
        self._verified: dict[str, dict[str, Any]] = {}

    def restart(self) -> list[str]:
        """A worker group (re)started: what a crashed save left is discarded, so stale files
        never leak into this attempt's save of the same step. Returns the names removed."""
        self._received.clear()
        self._submitted.clear()
        return self.store.discard_incomplete()

    def staging(self, tag: str) -> Path:
        return self.store.staging_dir(tag)

    def begin_file(self, tag: str, name: str) -> str:
        handle = self._receiver.begin(self.staging(tag), name)
        self._files[handle] = (tag, name)
        return handle

    def end_file(self, handle: str, sha256: str) -> None:
        """A streamed file arrived whole (the receiver checked it): remember its digest, so the
        commit does not read it again."""
        tag, name = self._files.pop(handle)
        self._received.setdefault(tag, {})[name] = sha256

    def is_checkpoint_file(self, handle: str) -> bool:
        return handle in self._files

    def submitted(self, tag: str, rank: int, state: dict[str, Any] | None) -> dict[str, Any] | None:
        """Rank `rank` has delivered all its files of `tag`. Commits when every rank has; returns
        the commit's state then, else None."""
        ranks, known_state = self._submitted.setdefault(tag, (set(), {}))
        ranks.add(rank)
        if state is not None:
            known_state.update(state)
        if not known_state or len(ranks) < known_state["world_size"]:
            return None
        self.store.commit(tag, known_state, self._received.pop(tag, {}))
        del self._submitted[tag]
        self._committed.add(tag)
        return known_state

    def is_committed(self, tag: str) -> bool:
        return tag in self._committed

    def latest(self, run_id: str) -> str | None:
        """The newest complete checkpoint this run wrote (after a restart), if any."""
        latest = self.store.latest(run_id)
        return latest[0] if latest else None

    def verified(self, tag: str) -> dict[str, Any]:
        """The manifest of `tag`, every file checked once per run (cached for the other ranks)."""
        if tag not in self._verified:
            self._verified[tag] = self.store.verify(tag)
        return self._verified[tag]

    def path(self, tag: str) -> Path:
        return self.store.root / tag

    def read(self, tag: str, name: str, offset: int, length: int) -> bytes:
        with confined(self.store.root / tag, name).open("rb") as fh:
            fh.seek(offset)
            return fh.read(length)
