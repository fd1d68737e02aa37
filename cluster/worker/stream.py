"""Send a rank's checkpoint files to the head over authenticated TCP streams (the head's side and
the protocol: cluster/head/checkpoint_stream.py, cluster/auth/channel.py).

One connection per file, at most STREAMS at once per rank; the bytes go with `socket.sendfile`
(zero-copy from the page cache, where the save just left them). The head hashes what arrives
and answers with the digest and size it wrote; a file is sent when that answer, authenticated
like the rest, says ok. Every socket operation has SOCKET_TIMEOUT_S: a silent head fails the
send, loudly, and the checkpoint with it.
"""

from __future__ import annotations

import socket
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from cluster.auth import channel
from cluster.auth.channel import ChannelError, canonical, recv_frame, send_frame

STREAMS = 4
SOCKET_TIMEOUT_S = 60.0


def send_dir(route: dict[str, Any], key: bytes, tag: str, rank: int, local_dir: Path) -> int:
    """Send every file below `local_dir` as part of checkpoint `tag`; returns the bytes sent.
    Largest files first, so the pool's streams end together.

    Raises:
        ChannelError: the head refused a file or a stream broke (the first failure).
        TimeoutError: the head went silent.
    """
    files = sorted(
        (p for p in local_dir.rglob("*") if p.is_file()), key=lambda p: -p.stat().st_size
    )
    with ThreadPoolExecutor(max(1, min(STREAMS, len(files))), "ftlaunch-ckpt-send") as pool:
        sends = [
            pool.submit(send_file, route, key, path, _header(tag, rank, path, local_dir))
            for path in files
        ]
        return sum(s.result() for s in sends)


def _header(tag: str, rank: int, path: Path, root: Path) -> dict[str, Any]:
    name = path.relative_to(root).as_posix()
    return {"tag": tag, "rank": rank, "name": name, "size": path.stat().st_size}


def send_file(route: dict[str, Any], key: bytes, path: Path, header: dict[str, Any]) -> int:
    """One file on one connection: handshake, sendfile, the head's authenticated answer.

    Raises:
        ChannelAuthError: the other end is not the head of this run.
        ChannelError: the head refused the file or the stream broke.
        TimeoutError: no progress for SOCKET_TIMEOUT_S.
    """
    nonce = bytes.fromhex(route["nonce"])
    address = (route["host"], route["port"])
    with socket.create_connection(address, timeout=SOCKET_TIMEOUT_S) as sock:
        challenge = bytes.fromhex(str(recv_frame(sock).get("challenge", "")))
        header_bytes = canonical(header)
        send_frame(
            sock,
            {
                "header": header,
                "mac": channel.mac(key, channel.CLIENT, nonce, challenge, header_bytes),
            },
        )
        answer = recv_frame(sock)
        if "result" in answer:  # refused before any byte (a bad name, no room)
            return _check_result(key, nonce, challenge, answer, header)
        channel.check_mac(key, answer.get("mac"), channel.SERVER, nonce, challenge, header_bytes)
        with path.open("rb") as fh:
            sent = sock.sendfile(fh, count=header["size"]) if header["size"] else 0
        if sent != header["size"]:
            raise ChannelError(f"{path}: sent {sent} of {header['size']} bytes (file shrank?)")
        return _check_result(key, nonce, challenge, recv_frame(sock), header)


def _check_result(
    key: bytes, nonce: bytes, challenge: bytes, answer: dict[str, Any], header: dict[str, Any]
) -> int:
    result = answer.get("result")
    if not isinstance(result, dict):
        raise ChannelError(f"{header['name']}: the head's answer has no result")
    channel.check_mac(key, answer.get("mac"), channel.RESULT, nonce, challenge, canonical(result))
    if not result.get("ok") or result.get("bytes") != header["size"]:
        raise ChannelError(f"the head refused {header['name']}: {result.get('error', result)}")
    return header["size"]
