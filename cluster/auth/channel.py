"""An authenticated byte channel between a rank and the head, for bulk data (checkpoint files).

Control messages stay on the Ray actor; bulk bytes go over a plain TCP stream whose two ends
prove to each other, before any byte of payload is accepted, that they hold the same key (the
run's Ray token) and the per-checkpoint nonce the head issued through the actor:

    head -> rank   {"challenge": <fresh per connection>}
    rank -> head   {"header": {...}, "mac": HMAC(key, client | nonce | challenge | header)}
    head -> rank   {"mac": HMAC(key, server | nonce | challenge | header)}
    rank -> head   exactly header["size"] bytes
    head -> rank   {"result": {...}, "mac": HMAC(key, result | nonce | challenge | result)}

Frames are a 4-byte big-endian length and canonical JSON (parsed as data, bounded in size). The
trust model is Ray's own token authentication: peers are authenticated and a replayed or forged
handshake is refused, but the payload is neither encrypted nor MACed (one more pass over every
byte); the head's sha256 of what arrived goes into the signed manifest.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import socket
from typing import Any

MAX_FRAME_BYTES = 64 << 10
CLIENT, SERVER, RESULT = b"ftlaunch-stream-client", b"ftlaunch-stream-server", b"ftlaunch-result"


class ChannelError(OSError):
    """The peer broke the protocol: a bad frame, a stream cut short, an error it reported."""


class ChannelAuthError(ChannelError):
    """The peer does not hold the key or the nonce (or replayed another connection's MAC)."""


def key_from_token(token: str) -> bytes:
    """The HMAC key derived from the run's token (never the token itself on the wire)."""
    return hashlib.sha256(b"ftlaunch-stream-key\0" + token.encode()).digest()


def canonical(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def mac(key: bytes, purpose: bytes, *parts: bytes) -> str:
    """HMAC-SHA256 over `purpose` and length-prefixed `parts` (no two splits collide)."""
    signer = hmac.new(key, purpose, hashlib.sha256)
    for part in parts:
        signer.update(len(part).to_bytes(8, "big") + part)
    return signer.hexdigest()


def check_mac(key: bytes, claimed: object, purpose: bytes, *parts: bytes) -> None:
    """
    Raises:
        ChannelAuthError: `claimed` is not the MAC of `parts` under `key`.
    """
    expected = mac(key, purpose, *parts)
    if not isinstance(claimed, str) or not hmac.compare_digest(claimed, expected):
        raise ChannelAuthError("authentication failed (wrong token or nonce)")


def send_frame(sock: socket.socket, obj: dict[str, Any]) -> None:
    body = canonical(obj)
    sock.sendall(len(body).to_bytes(4, "big") + body)


def recv_frame(sock: socket.socket) -> dict[str, Any]:
    """One frame from `sock` (its timeout applies to every read).

    Raises:
        ChannelError: a frame over MAX_FRAME_BYTES, not a JSON object, or the stream ended.
        TimeoutError: the peer went silent.
    """
    size = int.from_bytes(recv_exact(sock, 4), "big")
    if size > MAX_FRAME_BYTES:
        raise ChannelError(f"frame of {size} bytes (at most {MAX_FRAME_BYTES})")
    try:
        obj = json.loads(recv_exact(sock, size))
    except ValueError as exc:
        raise ChannelError(f"frame is not JSON: {exc}") from exc
    if not isinstance(obj, dict):
        raise ChannelError("frame is not a JSON object")
    return obj


def recv_exact(sock: socket.socket, size: int) -> bytes:
    """
    Raises:
        ChannelError: the stream ended first.
    """
    buffer = bytearray(size)
    view, got = memoryview(buffer), 0
    while got < size:
        n = sock.recv_into(view[got:])
        if not n:
            raise ChannelError(f"stream ended after {got} of {size} bytes")
        got += n
    return bytes(buffer)
