"""One run per output directory: `ftlaunch run` holds `output.dir/.lock` while it runs.

Two runs on one directory would share checkpoint staging, delete each other's in-flight saves
(`discard_incomplete`) and checkpoints (`prune`), and could mix shards in one manifest. The lock
is an exclusive `flock` on the file (the kernel drops it when the holder dies, even by SIGKILL;
NFS maps it to its own locks), and the file says who holds it (pid, host, run id, since when),
so a refused run can name the holder. A lock file whose flock is free is stale: it is taken
over, unless it names a process of this host that is still alive (a filesystem where flock
does not reach other holders), which is refused too. A SLURM job takes the lock when its
`ftlaunch run` starts, not when it is submitted.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from cluster.procs import process_start
from launcher.errors import UserError
from trainer.formats.rundir import LOCK_FILE

ATTEMPTS = 5


def holder_record(run_id: str) -> dict[str, Any]:
    pid = os.getpid()
    return {
        "pid": pid,
        "host": socket.gethostname(),
        "run_id": run_id,
        "since": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "start": process_start(pid),
    }


def is_live_here(holder: dict[str, Any]) -> bool:
    """Whether `holder` is a process of this host that is still running."""
    if holder.get("host") != socket.gethostname() or not isinstance(holder.get("pid"), int):
        return False
    started = process_start(holder["pid"])
    return started is not None and started == holder.get("start")


def describe(directory: Path, holder: dict[str, Any] | None) -> str:
    if not holder:
        return f"output.dir: {directory} is in use by another run (its lock file is being written)"
    return (
        f"output.dir: {directory} is in use by run {holder.get('run_id')} (pid {holder.get('pid')} "
        f"on {holder.get('host')}, since {holder.get('since')}); wait for it to end or choose "
        "another output.dir"
    )


@contextlib.contextmanager
def output_lock(directory: Path, run_id: str) -> Iterator[None]:
    """Hold `directory/.lock` for the block.

    Raises:
        UserError: another live run holds it (the message names the run, pid and host).
    """
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / LOCK_FILE
    fd = acquire(path, run_id)
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                path.unlink()
        os.close(fd)


def acquire(path: Path, run_id: str) -> int:
    """The locked file descriptor of `path`, with this process's record written in it."""
    for _ in range(ATTEMPTS):
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read(fd)
            os.close(fd)
            raise UserError(describe(path.parent, holder)) from None
        try:
            same_file = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:  # the holder released it between our open and flock
            same_file = False
        if not same_file:
            os.close(fd)
            continue
        previous = _read(fd)
        if previous and is_live_here(previous):
            os.close(fd)
            raise UserError(describe(path.parent, previous))
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(holder_record(run_id)) + "\n").encode(), 0)
        os.fsync(fd)
        return fd
    raise UserError(f"output.dir: {path.parent}: could not take {LOCK_FILE} (it keeps changing)")


def _read(fd: int) -> dict[str, Any] | None:
    try:
        data = json.loads(os.pread(fd, 4096, 0) or b"null")
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None
