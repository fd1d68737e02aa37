"""Checkpoint saves off the critical path, for one rank.

The training loop is blocked only while a checkpoint's state is copied into shared memory
(trainer/engines/background.py); the saver process writes and fsyncs the files, and only then
are they handed to the CheckpointSink, which delivers them and lets the head commit. A thread
here waits for the saver and calls the sink: it sleeps in a socket read, so it does not compete
with training for the interpreter lock.

One save at a time: the next snapshot first waits for the one in flight (`wait`, whose seconds
the loop reports as `save_overlap`). A save the saver could not write (a full disk, the saver
killed) is abandoned on the head (`commit_failed`) and raised at the next `wait`: never a commit
of partial files, never silence.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

from trainer.engines.background import BackgroundSaver, CheckpointSnapshot, SaveFailed
from trainer.protocols import CheckpointSink

# How long a save may take in the saver process (a large checkpoint on a slow disk).
SAVE_TIMEOUT_S = 3600.0


class BackgroundSaves:
    def __init__(self, sink: CheckpointSink, timeout_s: float = SAVE_TIMEOUT_S) -> None:
        self._sink = sink
        self._timeout_s = timeout_s
        self._saver = BackgroundSaver()
        self._landing: threading.Thread | None = None
        self._error: BaseException | None = None

    @property
    def pool_bytes(self) -> int:
        """Bytes the last snapshot used in the shared-memory pool."""
        return self._saver.pool.used_bytes

    def snapshot(self, root: Path) -> CheckpointSnapshot:
        """An empty snapshot of a checkpoint whose files go below `root`.

        Raises:
            RuntimeError: a save is still in flight (call `wait` first).
        """
        return self._saver.snapshot(root)

    def start(self, tag: str, snapshot: CheckpointSnapshot, state: dict[str, Any] | None) -> None:
        """Write `snapshot` in the saver process, then submit it to the sink (in the background).

        Raises:
            SaveFailed: the saver process could not be reached.
        """
        self._saver.start(snapshot)
        self._landing = threading.Thread(
            target=self._land, args=(tag, snapshot.root, state), name="ftlaunch-save", daemon=True
        )
        self._landing.start()

    def wait(self) -> float:
        """Until the save in flight is written and submitted; the seconds this waited.

        Raises:
            SaveFailed: the saver could not write it (the head was told: `commit_failed`).
            CheckpointNotCommitted (the sink's): the head could not commit an earlier one.
        """
        if self._landing is None:
            return 0.0
        started = time.perf_counter()
        self._landing.join()
        self._landing = None
        if self._error is not None:
            error, self._error = self._error, None
            raise error
        return time.perf_counter() - started

    def _land(self, tag: str, root: Path, state: dict[str, Any] | None) -> None:
        try:
            self._saver.wait(self._timeout_s)
        except SaveFailed as exc:
            self._error = exc
            try:
                self._sink.abandon(tag, str(exc))
            except Exception as report_error:  # the head is gone too: the save error says it all
                exc.add_note(f"could not report it to the head: {report_error}")
            return
        try:
            self._sink.submit(tag, root, state)
        except BaseException as exc:  # re-raised by `wait` in the training thread
            self._error = exc

    def close(self) -> None:
        """Stop the saver process and free the pool (after `wait`: nothing is in flight)."""
        self._saver.close()
