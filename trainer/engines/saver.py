"""The saver process: writes the files of a checkpoint snapshot from shared memory and fsyncs them.

One per rank, started at its first save (trainer/engines/background.py) and killed with it (the
kernel sends SIGKILL when the rank dies; a closed socket ends it too). It speaks over a Unix
SOCK_SEQPACKET socket, one JSON message per packet, and never unpickles anything:

- `{"op": "segment", "index": i, "bytes": n}` with the segment's memfd attached: map it;
- `{"op": "file", ...FileJob.as_json()}`, once per file of the next save;
- `{"op": "save", "id": k, "root": dir}`: write the files announced since the last save below
  `root` (a torch zip archive of its records, or raw bytes), fsync files and directories,
  answer `{"id": k, "error": null}`, or the first line of what failed.

Every name and range in a message is checked (names confined below `root`, ranges inside their
segment): a bad message fails that save, never writes elsewhere.

Run: python -m trainer.engines.saver <socket fd> <parent pid>
"""

from __future__ import annotations

import ctypes
import json
import mmap
import os
import signal
import socket
import sys
from pathlib import Path
from typing import Any

from trainer.formats.durable import fsync_path
from trainer.formats.names import confined

MAX_MESSAGE_BYTES = 8 << 20
STORAGE_ALIGNMENT = 64  # torch's default (torch.serialization._get_storage_alignment)
_PR_SET_PDEATHSIG = 1


class Segments:
    """The pool's segments as this process maps them, and the files of the next save. (Mapped
    writable only because torch wraps writable buffers without a warning: nothing writes them.)"""

    def __init__(self) -> None:
        self._maps: dict[int, mmap.mmap] = {}
        self.files: list[dict[str, Any]] = []

    def add(self, index: int, fd: int, size: int) -> None:
        try:
            self._maps[index] = mmap.mmap(fd, size)
        finally:
            os.close(fd)

    def view(self, segment: int, offset: int, nbytes: int) -> memoryview:
        """The bytes of a range.

        Raises:
            ValueError: the range is not inside a mapped segment.
        """
        if segment not in self._maps:
            raise ValueError(f"unknown pool segment {segment}")
        memory = self._maps[segment]
        if offset < 0 or nbytes <= 0 or offset + nbytes > len(memory):
            raise ValueError(f"range {offset}+{nbytes} outside pool segment {segment}")
        return memoryview(memory)[offset : offset + nbytes]


def write_files(root: Path, files: list[dict[str, Any]], segments: Segments) -> list[Path]:
    """Write every file of a save below `root` and fsync it and its directory; returns the paths.

    Raises:
        ValueError: a name escapes `root`, or a record is malformed or out of range.
        OSError: a write or fsync failed (a full disk).
    """
    written = []
    for entry in files:
        path = confined(root, str(entry["name"]))
        path.parent.mkdir(parents=True, exist_ok=True)
        records = [_record(r) for r in entry["records"]]
        if entry["kind"] == "torch":
            _write_torch(path, records, segments)
        elif entry["kind"] == "raw" and len(records) == 1:
            _write_raw(path, records[0], segments)
        else:
            raise ValueError(f"{entry['name']}: unknown file kind {entry['kind']!r}")
        written.append(path)
    for directory in {p.parent for p in written} | {root}:
        fsync_path(directory)
    return written


def _record(raw: Any) -> tuple[str, int, int, int]:
    name, segment, offset, nbytes = raw
    if not isinstance(name, str) or not all(isinstance(v, int) for v in (segment, offset, nbytes)):
        raise ValueError(f"malformed record {raw!r}")
    return name, segment, offset, nbytes


def _write_torch(path: Path, records: list[tuple[str, int, int, int]], segments: Segments) -> None:
    import torch  # here, not at the top: the unit tests of the protocol need no torch import

    writer = torch._C.PyTorchFileWriter(str(path), True, STORAGE_ALIGNMENT)
    for name, segment, offset, nbytes in records:
        if segment == -1 and nbytes == 0:
            writer.write_record(name, b"", 0)
            continue
        data = torch.frombuffer(segments.view(segment, offset, nbytes), dtype=torch.uint8)
        # The stub says Storage; torch.save itself passes an UntypedStorage here.
        writer.write_record(name, data.untyped_storage(), nbytes)  # pyright: ignore[reportArgumentType]
    writer.write_end_of_file()
    fsync_path(path)


def _write_raw(path: Path, record: tuple[str, int, int, int], segments: Segments) -> None:
    data = segments.view(record[1], record[2], record[3]) if record[3] else b""
    with path.open("wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def handle(message: dict[str, Any], fds: list[int], segments: Segments) -> dict[str, Any] | None:
    """Act on one message; the answer to send back, if any."""
    if message.get("op") == "segment":
        if len(fds) != 1:
            raise ValueError("a segment message must carry exactly one file descriptor")
        segments.add(int(message["index"]), fds[0], int(message["bytes"]))
        return None
    if message.get("op") == "file":
        segments.files.append(message)
        return None
    if message.get("op") == "save":
        files, segments.files = segments.files, []
        try:
            write_files(Path(message["root"]), files, segments)
        except (OSError, ValueError, KeyError, TypeError, RuntimeError) as exc:
            return {"id": message["id"], "error": f"{type(exc).__name__}: {exc}".splitlines()[0]}
        return {"id": message["id"], "error": None}
    raise ValueError(f"unknown message {message.get('op')!r}")


def serve(sock: socket.socket) -> None:
    """Answer messages until the parent closes its end."""
    segments = Segments()
    while True:
        data, fds, _, _ = socket.recv_fds(sock, MAX_MESSAGE_BYTES, 4)
        if not data:
            return
        answer = handle(json.loads(data), fds, segments)
        if answer is not None:
            sock.send(json.dumps(answer).encode())


def _die_with_parent(parent: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the parent died before the line above took effect
        os._exit(1)


def main(argv: list[str]) -> None:
    fd, parent = int(argv[0]), int(argv[1])
    _die_with_parent(parent)
    serve(socket.socket(fileno=fd))


if __name__ == "__main__":
    main(sys.argv[1:])
