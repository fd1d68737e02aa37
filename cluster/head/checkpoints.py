"""Commit checkpoints on the head once every rank's files are in.

Ranks on the head write straight into a checkpoint's staging directory; ranks on other nodes
send their files over an authenticated TCP stream (checkpoint_stream.py) that lands them there. Each rank then says it is done (`submitted`);
rank 0 also brings the training state, which says how many ranks there are. When all have
submitted, the CheckpointStore commits atomically (trainer/formats/checkpoints.py). On resume,
remote ranks read committed files back in chunks, each checkpoint verified once per run.

Tags and names come from workers: every tag must be `step-<n>`, every name is confined below the
checkpoint (trainer/formats/names.py), and reads serve only files the verified manifest lists.

Commits (hashing, fsync, rename, prune) run on a thread of their own, so the collector keeps
receiving files and answering while one is in progress. Every tag's outcome is kept
(`status`): each rank asks for it before its next save and at the end, so a commit that failed
(a full disk) is never lost; `on_result` gets a `committed` or `commit_failed` record.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from trainer.formats.checkpoints import CheckpointStore
from trainer.formats.names import UnsafeNameError, check_name, check_tag, confined
from trainer.formats.object_checkpoints import ObjectCheckpointStore

PENDING, COMMITTED, FAILED = "pending", "committed", "failed"


class CheckpointCommitter:
    def __init__(
        self,
        store: CheckpointStore | ObjectCheckpointStore,
        on_result: Callable[[dict[str, Any]], None] = lambda record: None,
    ) -> None:
        self.store = store
        self._on_result = on_result
        self._lock = threading.Lock()  # the collector's file and control threads both call in
        self._status: dict[str, tuple[str, str]] = {}  # tag -> (PENDING|COMMITTED|FAILED, why)
        self._failed: set[str] = set()
        self._commits = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ftlaunch-commit")
        self._received: dict[str, dict[str, str]] = {}  # tag -> name -> sha256
        self._streamed: dict[str, int] = {}  # tag -> bytes that arrived over the stream
        self._submitted: dict[str, tuple[set[int], dict[str, Any]]] = {}  # ranks, rank 0's state
        self._committed: set[str] = set()
        self._verified: dict[str, dict[str, Any]] = {}

    def restart(self) -> list[str]:
        """A worker group (re)started: what a crashed save left is discarded, so stale files
        never leak into this attempt's save of the same step. Returns the names removed."""
        with self._lock:
            self._received.clear()
            self._streamed.clear()
            self._submitted.clear()
        self._commits.submit(lambda: None).result()  # a commit in flight finishes first
        return self.store.discard_incomplete()

    def staging(self, tag: str) -> Path | str:
        """The head's staging directory of `tag`, or with an object store, the prefix the ranks
        upload this attempt's files to."""
        return self.store.staging_dir(check_tag(tag))

    def file_arrived(self, tag: str, name: str, sha256: str, size: int) -> None:
        """A rank's file of `tag` is in staging, whole and fsynced (checkpoint_stream.py checked
        and hashed it): remember its digest, so the commit does not read it again."""
        with self._lock:
            self._received.setdefault(tag, {})[name] = sha256
            self._streamed[tag] = self._streamed.get(tag, 0) + size

    def uploaded(self, tag: str, digests: dict[str, str]) -> None:
        """A rank uploaded its files of `tag` to the object store (name -> sha256)."""
        names = {check_name(name): digest for name, digest in digests.items()}
        with self._lock:
            self._received.setdefault(check_tag(tag), {}).update(names)

    def submitted(self, tag: str, rank: int, state: dict[str, Any] | None) -> bool:
        """Rank `rank` has delivered all its files of `tag`. When every rank has, the commit is
        queued on the commit thread; returns whether it was."""
        check_tag(tag)
        with self._lock:
            ranks, known_state = self._submitted.setdefault(tag, (set(), {}))
            ranks.add(rank)
            if state is not None:
                known_state.update(state)
            if not known_state or len(ranks) < known_state["world_size"]:
                return False
            del self._submitted[tag]
            received = self._received.pop(tag, {})
            streamed = self._streamed.pop(tag, 0)
            self._status[tag] = (PENDING, "")
        self._commits.submit(self._commit, tag, known_state, received, streamed)
        return True

    def failed(self, tag: str, reason: str) -> None:
        """A rank could not write or deliver its part of `tag`: it cannot be committed."""
        check_tag(tag)
        with self._lock:
            if tag in self._failed:
                return
            self._failed.add(tag)
            self._submitted.pop(tag, None)
            self._received.pop(tag, None)
            self._streamed.pop(tag, None)
        self.store.discard_staging(tag)
        self._on_result({"event": "commit_failed", "tag": tag, "error": reason})
        with self._lock:  # recorded first: a rank told "failed" finds the record there
            self._status[tag] = (FAILED, reason)

    def status(self, tag: str) -> tuple[str, str]:
        """(PENDING, COMMITTED or FAILED, the reason of a failure); ("unknown", "") before every
        rank has submitted."""
        with self._lock:
            return self._status.get(tag, ("unknown", ""))

    def failures(self) -> list[dict[str, str]]:
        with self._lock:
            return [{"tag": t, "error": why} for t, (s, why) in self._status.items() if s == FAILED]

    def _commit(
        self, tag: str, state: dict[str, Any], received: dict[str, str], streamed: int
    ) -> None:
        started = time.perf_counter()
        try:
            self.store.commit(tag, state, received)
        except Exception as exc:  # a full disk, an I/O error: recorded, raised on the ranks
            if not self.store.is_complete(tag):  # else: only pruning failed
                self.failed(tag, f"{type(exc).__name__}: {exc}")
                return
        with self._lock:
            self._status[tag] = (COMMITTED, "")
            self._committed.add(tag)
        commit_s = time.perf_counter() - started
        self._on_result(
            {
                "event": "committed",
                "tag": tag,
                "step": state.get("step"),
                "commit_s": commit_s,
                # what came over the TCP stream from ranks on other nodes (the rest was on the
                # head); with an object store, what the ranks uploaded there instead
                **(
                    {"streamed_files": len(received), "streamed_bytes": streamed}
                    if isinstance(self.store, CheckpointStore)
                    else {"stored_files": len(received), "store": self.store.where}
                ),
            }
        )

    def is_committed(self, tag: str) -> bool:
        return check_tag(tag) in self._committed

    def latest(self, run_id: str) -> str | None:
        """The newest complete checkpoint this run wrote (after a restart), if any."""
        latest = self.store.latest(run_id)
        return latest[0] if latest else None

    def verified(self, tag: str) -> dict[str, Any]:
        """The manifest of `tag`, every file checked once per run (cached for the other ranks)."""
        if check_tag(tag) not in self._verified:
            self._verified[tag] = self.store.verify(tag)
        return self._verified[tag]

    def on_disk(self) -> CheckpointStore:
        """The head's checkpoint directory (streamed files and reads of committed ones go there).

        Raises:
            UnsafeNameError: checkpoints are kept in an object store, not on the head.
        """
        if not isinstance(self.store, CheckpointStore):
            raise UnsafeNameError("checkpoints are in the object store, not on the head")
        return self.store

    def path(self, tag: str) -> Path:
        """The committed checkpoint `tag` on the head's disk.

        Raises:
            UnsafeNameError: a bad tag, or checkpoints that are kept in an object store.
        """
        return self.on_disk().root / check_tag(tag)

    def read(self, tag: str, name: str, offset: int, length: int) -> bytes:
        """`length` bytes at `offset` of a file the verified manifest of `tag` lists.

        Raises:
            UnsafeNameError: a bad tag, or a name the manifest does not list.
        """
        if name not in self.verified(tag)["files"]:
            raise UnsafeNameError(f"{tag}/{name}: not a file of this checkpoint")
        with confined(self.path(tag), name).open("rb") as fh:
            fh.seek(offset)
            return fh.read(length)
