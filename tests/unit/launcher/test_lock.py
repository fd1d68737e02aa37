"""One run per output.dir: the lock is exclusive, names its holder, is released on exit, and a
stale lock file (its holder gone) is taken over."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest

from cluster.procs import process_start
from launcher.errors import UserError
from launcher.lock import output_lock


def test_a_second_holder_is_refused_naming_the_first(tmp_path: Path) -> None:
    with output_lock(tmp_path, "run-a"):
        holder = json.loads((tmp_path / ".lock").read_text())
        assert holder["pid"] == os.getpid() and holder["run_id"] == "run-a"
        with pytest.raises(UserError) as refused, output_lock(tmp_path, "run-b"):
            pass
        (message,) = refused.value.messages
        assert message.startswith(
            f"output.dir: {tmp_path} is in use by run run-a (pid {os.getpid()}"
        )
        assert socket.gethostname() in message and "\n" not in message
    assert not (tmp_path / ".lock").exists()  # released on exit
    with output_lock(tmp_path, "run-b"):
        assert json.loads((tmp_path / ".lock").read_text())["run_id"] == "run-b"


def test_a_lock_file_left_by_a_dead_process_is_taken_over(tmp_path: Path) -> None:
    dead = {"pid": 2**22 + 17, "host": socket.gethostname(), "run_id": "old", "start": "1"}
    (tmp_path / ".lock").write_text(json.dumps(dead))
    with output_lock(tmp_path, "new"):
        assert json.loads((tmp_path / ".lock").read_text())["run_id"] == "new"


def test_a_live_process_of_this_host_named_in_the_file_is_refused_without_flock(
    tmp_path: Path,
) -> None:
    """A filesystem whose flock does not reach the holder: the pid, host and start time say it
    is alive, so the lock is not stale."""
    parent = os.getppid()
    live = {
        "pid": parent,
        "host": socket.gethostname(),
        "run_id": "x",
        "start": process_start(parent),
    }
    (tmp_path / ".lock").write_text(json.dumps(live))
    with pytest.raises(UserError, match="in use by run x"), output_lock(tmp_path, "y"):
        pass
    reused = live | {"start": "0"}  # the same pid, another process: stale
    (tmp_path / ".lock").write_text(json.dumps(reused))
    with output_lock(tmp_path, "y"):
        pass
