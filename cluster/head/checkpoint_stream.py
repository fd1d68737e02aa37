"""Checkpoint files from ranks on other nodes, straight into the head's staging over TCP.

The collector actor issues each checkpoint a nonce and tells ranks where this server listens
(`route`); each file then travels on a connection of its own, authenticated both ways before
any byte is accepted (cluster/auth/channel.py). The server checks, in this order: the MAC, the
tag (`step-<n>`, not already failed), the name (confined below the staging directory), the
declared size (an integer, at most MAX_FILE_BYTES and what the disk has free). It then writes
exactly that many bytes to `.<name>.<id>.part` beside the target (preallocated: a full disk
fails before the bytes travel), spliced in the kernel and hashed as they arrive (the one sha256
the manifest records), fsyncs, and renames into place; only then does the rank
hear "ok" and may announce its part submitted.

A stream that breaks, goes silent for SOCKET_TIMEOUT_S, or cannot be written (a full disk) fails
its checkpoint through the committer (`commit_failed`) and leaves no partial file. A peer that
fails authentication is only disconnected: it cannot fail someone else's checkpoint.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import mmap
import os
import secrets
import select
import shutil
import socket
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from cluster.auth.channel import (
    CLIENT,
    RESULT,
    SERVER,
    ChannelAuthError,
    ChannelError,
    canonical,
    check_mac,
    mac,
    recv_frame,
    send_frame,
)
from cluster.head.checkpoints import CheckpointCommitter
from trainer.formats.names import check_name, check_tag, confined

SOCKET_TIMEOUT_S = 60.0
MAX_FILE_BYTES = 1 << 40
MAX_CONNECTIONS = 32
BUFFER_BYTES = 1 << 20

log = logging.getLogger(__name__)


class RefusedFile(ChannelError):
    """An authenticated rank sent a header the head will not accept (name, size, tag)."""


class CheckpointStreamServer:
    """Listens on `host` (port chosen by the OS) once `start` is called; a thread per
    connection, at most MAX_CONNECTIONS at once."""

    def __init__(self, committer: CheckpointCommitter, key: bytes, host: str = "127.0.0.1") -> None:
        self._committer = committer
        self._key = key
        self._host = host
        self._nonces: dict[str, bytes] = {}
        self._lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        self._listener: socket.socket | None = None
        self.timeout_s = SOCKET_TIMEOUT_S

    def start(self) -> tuple[str, int]:
        """Open the listening socket (once) and start accepting; returns (host, port)."""
        with self._lock:
            if self._listener is None:
                self._listener = socket.create_server((self._host, 0), backlog=MAX_CONNECTIONS)
                threading.Thread(
                    target=self._accept, name="ftlaunch-ckpt-accept", daemon=True
                ).start()
            host, port = self._listener.getsockname()[:2]
        return host, port

    def close(self) -> None:
        with self._lock:
            if self._listener is not None:
                self._listener.close()

    def route(self, tag: str) -> dict[str, Any]:
        """Where and with which nonce ranks send their files of `tag` (one nonce per tag)."""
        host, port = self.start()
        with self._lock:
            nonce = self._nonces.setdefault(check_tag(tag), secrets.token_bytes(16))
        return {"host": host, "port": port, "nonce": nonce.hex()}

    def _accept(self) -> None:
        assert self._listener is not None
        while True:
            self._slots.acquire()
            try:
                conn, _ = self._listener.accept()
            except OSError:  # closed
                self._slots.release()
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            with conn:
                conn.settimeout(self.timeout_s)
                self._handle(conn)
        except Exception as exc:  # a peer's failure must not take the server down
            log.warning("checkpoint stream: connection dropped: %s: %s", type(exc).__name__, exc)
        finally:
            self._slots.release()

    def _handle(self, conn: socket.socket) -> None:
        challenge = secrets.token_bytes(16)
        send_frame(conn, {"challenge": challenge.hex()})
        hello = recv_frame(conn)
        header = hello.get("header")
        tag = header.get("tag") if isinstance(header, dict) else None
        nonce = self._nonces.get(tag) if isinstance(tag, str) else None
        if not isinstance(header, dict) or nonce is None:
            send_frame(conn, {"result": {"ok": False, "error": "authentication failed"}})
            raise ChannelAuthError(f"checkpoint {tag!r}: no nonce was issued for it")
        header_bytes = canonical(header)
        try:
            check_mac(self._key, hello.get("mac"), CLIENT, nonce, challenge, header_bytes)
        except ChannelAuthError:  # said unsigned: the peer proved nothing, it learns nothing
            send_frame(conn, {"result": {"ok": False, "error": "authentication failed"}})
            raise
        assert isinstance(tag, str)
        state = self._committer.status(tag)[0]
        if state != "unknown":  # every rank has submitted (or it failed): no file may join now
            result: dict[str, Any] = {"ok": False, "error": f"checkpoint {tag} is {state}"}
        else:
            result = self._receive_or_fail(conn, tag, header, nonce, challenge)
        body = canonical(result)
        send_frame(conn, {"result": result, "mac": mac(self._key, RESULT, nonce, challenge, body)})

    def _receive_or_fail(
        self,
        conn: socket.socket,
        tag: str,
        header: dict[str, Any],
        nonce: bytes,
        challenge: bytes,
    ) -> dict[str, Any]:
        header_bytes = canonical(header)
        try:
            return self._receive(
                conn, tag, header, mac(self._key, SERVER, nonce, challenge, header_bytes)
            )
        except (OSError, ValueError) as exc:  # authenticated: the checkpoint cannot be committed
            reason = f"{type(exc).__name__}: {exc}"
            self._committer.failed(
                tag, f"rank {header.get('rank')} could not send {header.get('name')!r}: {reason}"
            )
            return {"ok": False, "error": reason}

    def _receive(
        self, conn: socket.socket, tag: str, header: dict[str, Any], server_mac: str
    ) -> dict[str, Any]:
        name, size = header.get("name"), header.get("size")
        check_name(name)  # before the staging directory exists: a refusal writes nothing
        store = self._committer.on_disk()  # with an object store, nothing comes to the head
        check_size(size, store.root)
        target = confined(store.staging_dir(check_tag(tag)), str(name))
        assert isinstance(size, int)
        send_frame(conn, {"mac": server_mac})
        digest = receive_into(conn, target, size, self.timeout_s)
        self._committer.file_arrived(tag, str(name), digest, size)
        return {"ok": True, "sha256": digest, "bytes": size}


def check_size(size: object, root: Path) -> None:
    """
    Raises:
        RefusedFile: not an integer in [0, MAX_FILE_BYTES], or more than the disk has free.
    """
    if not isinstance(size, int) or isinstance(size, bool) or not 0 <= size <= MAX_FILE_BYTES:
        raise RefusedFile(f"declared size {size!r}: must be an integer in [0, {MAX_FILE_BYTES}]")
    free = shutil.disk_usage(root if root.exists() else root.parent).free
    if size > free:
        raise RefusedFile(f"declared size {size} bytes: only {free} free on the head")


def receive_into(conn: socket.socket, target: Path, size: int, timeout_s: float) -> str:
    """Exactly `size` bytes from `conn` into `target` (hashed, fsynced, renamed into place);
    returns their sha256. Nothing is left behind on failure.

    Raises:
        ChannelError: the stream ended early.
        TimeoutError: the sender went silent for `timeout_s`.
        OSError: the head could not write (a full disk: refused by fallocate before the bytes).
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.{uuid.uuid4().hex}.part")
    try:
        fd = os.open(partial, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        try:
            digest = splice_hashed(conn, fd, size, timeout_s) if size else hashlib.sha256()
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)
    return digest.hexdigest()


def splice_hashed(conn: socket.socket, fd: int, size: int, timeout_s: float) -> Any:
    """Move `size` bytes from the socket into the file in the kernel (socket -> pipe -> page
    cache, no copy through Python), hashing each piece where it landed through a read-only
    mapping: one pass over the bytes in user space, the sha256 itself."""
    os.posix_fallocate(fd, 0, size)
    digest = hashlib.sha256()
    read_end, write_end = os.pipe()
    try:
        piece = _widen(write_end)
        with mmap.mmap(fd, size, prot=mmap.PROT_READ) as mapped:
            mapped.madvise(mmap.MADV_SEQUENTIAL)
            view = memoryview(mapped)
            try:
                done = 0
                while done < size:
                    n = _splice_in(conn, write_end, min(size - done, piece), timeout_s)
                    if not n:
                        raise ChannelError(f"stream ended after {done} of {size} bytes")
                    for moved in _splice_out(read_end, fd, n, done):
                        digest.update(view[done : done + moved])
                        done += moved
            finally:
                view.release()
    finally:
        os.close(read_end)
        os.close(write_end)
    return digest


def _widen(pipe_fd: int) -> int:
    """The pipe's capacity, raised to BUFFER_BYTES where the system allows."""
    try:
        return fcntl.fcntl(pipe_fd, fcntl.F_SETPIPE_SZ, BUFFER_BYTES)
    except OSError:  # above /proc/sys/fs/pipe-max-size: keep the default
        return fcntl.fcntl(pipe_fd, fcntl.F_GETPIPE_SZ)


def _splice_in(conn: socket.socket, pipe_fd: int, count: int, timeout_s: float) -> int:
    """Up to `count` bytes from the socket into the empty pipe; 0 when the stream ended.

    Raises:
        TimeoutError: nothing arrived for `timeout_s`.
    """
    flags = os.SPLICE_F_MOVE | os.SPLICE_F_NONBLOCK
    while True:
        try:
            return os.splice(conn.fileno(), pipe_fd, count, flags=flags)
        except BlockingIOError:
            if not select.select([conn], [], [], timeout_s)[0]:
                raise TimeoutError(
                    f"the sender went silent (timed out after {timeout_s:g} s)"
                ) from None


def _splice_out(pipe_fd: int, fd: int, count: int, offset: int) -> Iterator[int]:
    """Drain `count` bytes from the pipe into the file at `offset`, yielding each piece."""
    while count:
        moved = os.splice(pipe_fd, fd, count, offset_dst=offset, flags=os.SPLICE_F_MOVE)
        yield moved
        count -= moved
        offset += moved
