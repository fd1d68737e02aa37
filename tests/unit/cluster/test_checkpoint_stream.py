"""The checkpoint stream's rules over real sockets, in process: both ends authenticate before a
byte is accepted, names stay below the staging directory, sizes are declared and bounded, and a
stream that breaks or goes silent fails its checkpoint without leaving a partial file."""

from __future__ import annotations

import shutil
import socket
import time
from pathlib import Path
from typing import Any

import pytest

from cluster.auth.channel import (
    CLIENT,
    ChannelAuthError,
    ChannelError,
    canonical,
    key_from_token,
    mac,
    recv_frame,
    send_frame,
)
from cluster.head.checkpoint_stream import MAX_FILE_BYTES, CheckpointStreamServer
from cluster.head.checkpoints import CheckpointCommitter
from cluster.worker.stream import send_dir, send_file
from trainer.formats.checkpoints import CheckpointStore

KEY = key_from_token("run-token")


@pytest.fixture
def head(tmp_path: Path):
    records: list[dict[str, Any]] = []
    committer = CheckpointCommitter(CheckpointStore(tmp_path / "ckpt"), records.append)
    server = CheckpointStreamServer(committer, KEY)
    yield server, committer, records
    server.close()


def files_below(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def test_parallel_streams_land_whole_files_hashed_on_the_head(head, tmp_path: Path) -> None:
    server, committer, records = head
    local = tmp_path / "rank1"
    (local / "ds").mkdir(parents=True)
    payloads = {"ds/optim.pt": bytes(range(256)) * 40_000, "ds/model.pt": b"m" * 3, "empty": b""}
    for name, data in payloads.items():
        (local / name).write_bytes(data)
    sent = send_dir(server.route("step-2"), KEY, "step-2", 1, local)
    assert sent == sum(map(len, payloads.values()))
    staging = committer.staging("step-2")
    assert files_below(staging) == sorted(payloads)  # no .part left beside them
    committer.submitted("step-2", 1, {"step": 2, "world_size": 2})
    committer.submitted("step-2", 0, None)
    deadline = time.monotonic() + 10
    while committer.status("step-2")[0] != "committed":
        assert time.monotonic() < deadline, committer.status("step-2")
        time.sleep(0.01)
    committed = tmp_path / "ckpt" / "step-2"
    for name, data in payloads.items():  # an independent reference: the bytes the rank had
        assert (committed / name).read_bytes() == data
    assert records[-1]["streamed_files"] == 3 and records[-1]["streamed_bytes"] == sent
    late = {"tag": "step-2", "rank": 1, "name": "late.bin", "size": 0}  # after every rank submitted
    with pytest.raises(ChannelError, match="step-2 is committed"):
        send_file(server.route("step-2"), KEY, local / "empty", late)
    assert committer.status("step-2")[0] == "committed"
    assert not (tmp_path / "ckpt" / ".tmp-step-2").exists()


def test_a_peer_without_the_key_is_refused_before_any_byte_and_fails_nothing(
    head, tmp_path: Path
) -> None:
    server, committer, records = head
    (tmp_path / "a.bin").write_bytes(b"x" * 100)
    route = server.route("step-3")
    header = {"tag": "step-3", "rank": 1, "name": "a.bin", "size": 100}
    with pytest.raises(ChannelAuthError):
        send_file(route, key_from_token("another-token"), tmp_path / "a.bin", header)
    with pytest.raises(ChannelAuthError):  # the right key but a nonce never issued
        send_file(route | {"nonce": "00" * 16}, KEY, tmp_path / "a.bin", header)
    with pytest.raises(ChannelAuthError):  # a tag the head issued no nonce for
        send_file(route, KEY, tmp_path / "a.bin", header | {"tag": "step-4"})
    assert not (tmp_path / "ckpt").exists() or files_below(tmp_path / "ckpt") == []
    assert committer.status("step-3") == ("unknown", "") and records == []


def test_a_replayed_handshake_is_refused(head) -> None:
    """A MAC seen on one connection is useless on the next: each has a fresh challenge."""
    server, committer, _ = head
    route = server.route("step-5")
    nonce = bytes.fromhex(route["nonce"])
    header = {"tag": "step-5", "rank": 1, "name": "a.bin", "size": 1}
    with socket.create_connection((route["host"], route["port"]), timeout=5) as sock:
        challenge = bytes.fromhex(recv_frame(sock)["challenge"])
        seen = mac(KEY, CLIENT, nonce, challenge, canonical(header))
        send_frame(sock, {"header": header, "mac": seen})
        assert "mac" in recv_frame(sock)
        sock.sendall(b"z")
        assert recv_frame(sock)["result"]["ok"]
    with socket.create_connection((route["host"], route["port"]), timeout=5) as sock:
        recv_frame(sock)
        send_frame(sock, {"header": header | {"size": 2}, "mac": seen})
        assert recv_frame(sock)["result"] == {"ok": False, "error": "authentication failed"}
    assert (committer.staging("step-5") / "a.bin").read_bytes() == b"z"
    assert committer.status("step-5") == ("unknown", "")


@pytest.mark.parametrize(
    ("name", "size", "problem"),
    [
        ("../../outside.bin", 1, "must not contain"),
        ("/etc/passwd", 1, "must be a relative path"),
        ("linked/x", 1, "symbolic link"),
        ("a.bin", -1, "declared size"),
        ("a.bin", True, "declared size"),
        ("a.bin", 1 << 50, "declared size"),
        ("a.bin", "10", "declared size"),
    ],
)
def test_bad_names_and_sizes_fail_the_checkpoint_and_write_nothing(
    head, tmp_path: Path, name: str, size: object, problem: str
) -> None:
    server, committer, records = head
    (tmp_path / "outside").mkdir()
    (committer.staging("step-6") / "linked").symlink_to(tmp_path / "outside")
    (tmp_path / "a.bin").write_bytes(b"x")
    header = {"tag": "step-6", "rank": 1, "name": name, "size": size}
    with pytest.raises(ChannelError, match=problem):
        send_file(server.route("step-6"), KEY, tmp_path / "a.bin", header)
    assert committer.status("step-6")[0] == "failed"
    assert records[-1]["event"] == "commit_failed" and problem in records[-1]["error"]
    assert files_below(tmp_path / "outside") == [] and files_below(committer.store.root) == []


def handshake(route: dict[str, Any], header: dict[str, Any]) -> socket.socket:
    """An authenticated connection, accepted by the head, with no payload sent yet."""
    sock = socket.create_connection((route["host"], route["port"]), timeout=5)
    challenge = bytes.fromhex(recv_frame(sock)["challenge"])
    nonce = bytes.fromhex(route["nonce"])
    send_frame(
        sock, {"header": header, "mac": mac(KEY, CLIENT, nonce, challenge, canonical(header))}
    )
    assert "mac" in recv_frame(sock)  # the head's proof: bytes may follow
    return sock


@pytest.mark.parametrize("fault", ["cut", "silent"])
def test_a_broken_or_silent_stream_fails_the_checkpoint_and_leaves_no_partial_file(
    head, fault: str
) -> None:
    server, committer, records = head
    server.timeout_s = 0.5
    route = server.route("step-7")
    sock = handshake(route, {"tag": "step-7", "rank": 1, "name": "big.bin", "size": 1 << 20})
    sock.sendall(b"y" * 1000)
    staging = committer.staging("step-7")
    if fault == "cut":
        sock.close()
    deadline = time.monotonic() + 10
    while committer.status("step-7")[0] != "failed":
        assert time.monotonic() < deadline, "the head never gave up on the stream"
        time.sleep(0.02)
    sock.close()
    expected = "stream ended after 1000" if fault == "cut" else "timed out"
    assert expected in records[-1]["error"]
    assert not staging.exists()  # the failed checkpoint's staging is gone, no partial in it
    assert files_below(committer.store.root) == []


def test_a_rank_hears_a_silent_head_as_an_error(tmp_path: Path, monkeypatch) -> None:
    """The sender's side of the timeout: a listener that never answers."""
    import cluster.worker.stream as stream

    monkeypatch.setattr(stream, "SOCKET_TIMEOUT_S", 0.3)
    with socket.create_server(("127.0.0.1", 0)) as mute:
        host, port = mute.getsockname()[:2]
        (tmp_path / "a.bin").write_bytes(b"z")
        route = {"host": host, "port": port, "nonce": "00" * 16}
        header = {"tag": "step-1", "rank": 1, "name": "a.bin", "size": 1}
        with pytest.raises(TimeoutError):
            send_file(route, KEY, tmp_path / "a.bin", header)


def test_a_file_larger_than_the_free_disk_is_refused_before_its_bytes(head, tmp_path) -> None:
    server, committer, records = head
    free = shutil.disk_usage(tmp_path).free
    if free + 1 > MAX_FILE_BYTES:
        pytest.skip("this disk has more free than the size cap")
    (tmp_path / "a.bin").write_bytes(b"x")
    header = {"tag": "step-9", "rank": 1, "name": "a.bin", "size": free + (1 << 30)}
    with pytest.raises(ChannelError, match="free on the head"):
        send_file(server.route("step-9"), KEY, tmp_path / "a.bin", header)
    assert records[-1]["event"] == "commit_failed"
    assert files_below(committer.store.root) == []
