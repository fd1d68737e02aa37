"""One rank's background saves: snapshot into shared memory, write in the saver process.

`snapshot(root)` collects a checkpoint's files as pool ranges (the only part the training loop
waits for), `start()` hands them to the saver process and `wait()` returns once they are on disk
and fsynced, or raises. One save at a time: the pool holds one snapshot, so the next snapshot
waits for the previous write (`wait`), never two in memory at once.

The saver is a separate process, not a thread, so serialising and writing never compete with
training for the interpreter lock. It is spawned at the first save (a fresh interpreter: no fork
of a process holding threads and a process group) and dies with this one.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from trainer.engines.snapshot_pool import (
    FileJob,
    SnapshotPool,
    snapshot_raw_file,
    snapshot_torch_file,
)

POLL_S = 1.0
SOCKET_BUFFER_BYTES = 8 << 20


class SaveFailed(RuntimeError):
    """The saver process could not write a checkpoint (the message says why)."""


class CheckpointSnapshot:
    """The files of one checkpoint, copied into the pool, not yet written."""

    def __init__(self, pool: SnapshotPool, root: Path) -> None:
        self._pool = pool
        self.root = root
        self.files: list[FileJob] = []

    def add_torch(self, state: Any, path: Path) -> None:
        """What `torch.save(state, path)` would write (`path` below the root)."""
        self.files.append(snapshot_torch_file(self._pool, state, self._name(path)))

    def add_bytes(self, data: bytes, path: Path) -> None:
        self.files.append(snapshot_raw_file(self._pool, data, self._name(path)))

    def _name(self, path: Path) -> str:
        return Path(path).resolve().relative_to(self.root.resolve()).as_posix()


class BackgroundSaver:
    """The pool, the saver process and the save in flight, for one rank."""

    def __init__(self) -> None:
        self.pool = SnapshotPool()
        self._process: subprocess.Popen[bytes] | None = None
        self._sock: socket.socket | None = None
        self._announced = 0
        self._in_flight: int | None = None
        self._next_id = 0

    def snapshot(self, root: Path) -> CheckpointSnapshot:
        """A new, empty snapshot (the previous save must have been waited for)."""
        if self._in_flight is not None:
            raise RuntimeError("a save is still in flight: wait() for it before the next snapshot")
        self.pool.reset()
        return CheckpointSnapshot(self.pool, root)

    def start(self, snapshot: CheckpointSnapshot) -> None:
        """Hand `snapshot` to the saver process and return at once.

        Raises:
            SaveFailed: the saver process is gone.
        """
        sock = self._connect()
        message = {"op": "save", "id": self._next_id, "root": str(snapshot.root)}
        self._in_flight, self._next_id = self._next_id, self._next_id + 1
        try:
            while self._announced < self.pool.segment_count:
                fd, size = self.pool.segment_fd(self._announced)
                header = {"op": "segment", "index": self._announced, "bytes": size}
                socket.send_fds(sock, [json.dumps(header).encode()], [fd])
                self._announced += 1
            for job in snapshot.files:  # one packet per file: a packet's size is bounded
                sock.send(json.dumps({"op": "file"} | job.as_json()).encode())
            sock.send(json.dumps(message).encode())
        except OSError as exc:
            raise SaveFailed(self._died(f"could not reach the saver process ({exc})")) from exc

    def is_busy(self) -> bool:
        return self._in_flight is not None

    def wait(self, timeout_s: float) -> None:
        """Until the save in flight is on disk (nothing in flight: returns at once).

        Raises:
            SaveFailed: the saver could not write it, died, or took longer than `timeout_s`.
        """
        if self._in_flight is None:
            return
        expected, self._in_flight = self._in_flight, None
        answer = self._answer(timeout_s)
        if answer.get("id") != expected:
            raise SaveFailed(f"saver answered save {answer.get('id')}, expected {expected}")
        if answer.get("error") is not None:
            raise SaveFailed(f"saver process: {answer['error']}")

    def _answer(self, timeout_s: float) -> dict[str, Any]:
        sock, process = self._sock, self._process
        if sock is None or process is None:
            raise SaveFailed("no saver process")
        deadline = time.monotonic() + timeout_s
        while True:  # short timeouts only to notice a dead saver: a timeout is not an answer
            try:
                data = sock.recv(1 << 16)
            except TimeoutError:
                if process.poll() is not None:
                    raise SaveFailed(self._died("saver process died mid-save")) from None
                if time.monotonic() > deadline:
                    raise SaveFailed(f"saver did not finish within {timeout_s:.0f}s") from None
                continue
            if not data:
                raise SaveFailed(self._died("saver process closed its socket mid-save"))
            return json.loads(data)

    def _died(self, what: str) -> str:
        process = self._process
        code = process.wait(timeout=5) if process is not None else None
        self._drop_process()
        return f"{what} (exit code {code})"

    def _connect(self) -> socket.socket:
        if self._sock is not None and self._process is not None and self._process.poll() is None:
            return self._sock
        self._drop_process()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        for option in (socket.SO_SNDBUF, socket.SO_RCVBUF):
            ours.setsockopt(socket.SOL_SOCKET, option, SOCKET_BUFFER_BYTES)
            theirs.setsockopt(socket.SOL_SOCKET, option, SOCKET_BUFFER_BYTES)
        command = [sys.executable, "-m", "trainer.engines.saver", str(theirs.fileno())]
        self._process = subprocess.Popen(
            [*command, str(os.getpid())], pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL
        )
        theirs.close()
        ours.settimeout(POLL_S)
        self._sock, self._announced = ours, 0
        return ours

    def _drop_process(self) -> None:
        if self._sock is not None:
            self._sock.close()
        if self._process is not None and self._process.poll() is None:
            self._process.kill()
            self._process.wait(timeout=30)
        self._sock, self._process, self._in_flight = None, None, None

    def close(self) -> None:
        """Stop the saver process and free the pool (a save in flight is abandoned)."""
        self._drop_process()
        self.pool.close()
