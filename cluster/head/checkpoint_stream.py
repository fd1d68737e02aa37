"""Checkpoint files from ranks on other nodes, straight into the head's staging over TCP.

The collector actor issues each checkpoint a nonce and tells ranks where this server listens
(`route`); each file then travels on a connection of its own, authenticated both ways before
any byte is accepted (cluster/auth/channel.py). The server checks, in this order: the MAC, the
tag (`step-<n>`, not already failed), the name (confined below the staging directory), the
declared size (an integer, at most MAX_FILE_BYTES and what the disk has free). It then writes
exactly that many bytes to `.<name>.<id>.part` beside the target, hashing them as they arrive
(the one sha256 the manifest records), fsyncs, and renames into place; only then does the rank
hear "ok" and may announce its part submitted.

A stream that breaks, goes silent for SOCKET_TIMEOUT_S, or cannot be written (a full disk) fails
its checkpoint through the committer (`commit_failed`) and leaves no partial file. A peer that
fails authentication is only disconnected: it cannot fail someone else's checkpoint.
"""

from __future__ import annotations

import hashlib
import logging
import os
import secrets
import shutil
import socket
import threading
import uuid
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
        try:
            result = self._receive(
                conn, tag, header, mac(self._key, SERVER, nonce, challenge, header_bytes)
            )
        except (OSError, ValueError) as exc:  # authenticated: the checkpoint cannot be committed
            reason = f"{type(exc).__name__}: {exc}"
            self._committer.failed(
                tag, f"rank {header.get('rank')} could not send {header.get('name')!r}: {reason}"
            )
            result = {"ok": False, "error": reason}
        body = canonical(result)
        send_frame(conn, {"result": result, "mac": mac(self._key, RESULT, nonce, challenge, body)})

    def _receive(
        self, conn: socket.socket, tag: str, header: dict[str, Any], server_mac: str
    ) -> dict[str, Any]:
        name, size = header.get("name"), header.get("size")
        if self._committer.status(tag)[0] == "failed":
            raise RefusedFile(f"checkpoint {tag} has already failed")
        check_name(name)  # before the staging directory exists: a refusal writes nothing
        check_size(size, self._committer.store.root)
        target = confined(self._committer.staging(tag), str(name))
        assert isinstance(size, int)
        send_frame(conn, {"mac": server_mac})
        digest = receive_into(conn, target, size)
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


def receive_into(conn: socket.socket, target: Path, size: int) -> str:
    """Exactly `size` bytes from `conn` into `target` (hashed, fsynced, renamed into place);
    returns their sha256. Nothing is left behind on failure.

    Raises:
        ChannelError: the stream ended early.
        TimeoutError: the sender went silent for the socket's timeout.
        OSError: the head could not write (a full disk).
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.{uuid.uuid4().hex}.part")
    digest, buffer = hashlib.sha256(), memoryview(bytearray(BUFFER_BYTES))
    try:
        with partial.open("xb") as fh:  # buffered: a write is whole (raw writes may be short)
            left = size
            while left:
                n = conn.recv_into(buffer, min(left, BUFFER_BYTES))
                if not n:
                    raise ChannelError(f"stream ended after {size - left} of {size} bytes")
                digest.update(buffer[:n])
                fh.write(buffer[:n])
                left -= n
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)
    return digest.hexdigest()
