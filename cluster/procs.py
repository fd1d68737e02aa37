"""Find processes by a marker in their environment: every process a run starts (Ray's GCS,
raylet, workers) inherits it, so what is left of a run can be found and killed by PID without
touching anything else on the machine (`ray stop` would stop every Ray of the user)."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path


def process_start(pid: int) -> str | None:
    """The kernel's start time of `pid` (field 22 of /proc/PID/stat: tells a reused PID apart),
    None if there is no such process."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def is_running(pid: int, started: str) -> bool:
    """Whether the process `pid` that started at `started` (process_start) still runs: not
    gone, not another process under a reused PID, not a zombie its parent has yet to reap."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return False
    return fields[19] == started and fields[0] not in ("Z", "X")


def ancestors(pid: int) -> set[int]:
    """`pid` and its parents up to init."""
    chain = {pid}
    while pid > 1:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            break
        pid = int(stat.rsplit(")", 1)[1].split()[1])
        chain.add(pid)
    return chain


def _own_processes() -> Iterator[Path]:
    """/proc entries of this user's processes, except this process and its parents."""
    spared = ancestors(os.getpid())
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) in spared:
            continue
        with contextlib.suppress(OSError):  # gone meanwhile
            if entry.stat().st_uid == os.getuid():
                yield entry


def marked_pids(marker: str) -> list[int]:
    """PIDs (of this user) whose environment holds `marker` ("NAME=value"), except this process
    and its parents."""
    needle = marker.encode() + b"\0"
    found = []
    for entry in _own_processes():
        with contextlib.suppress(OSError):  # gone meanwhile, or not ours to read
            if needle in (entry / "environ").read_bytes() + b"\0":
                found.append(int(entry.name))
    return found


def group_pids(pgid: int) -> list[int]:
    """PIDs (of this user) in process group `pgid`, except this process and its parents."""
    found = []
    for entry in _own_processes():
        with contextlib.suppress(OSError, IndexError, ValueError):
            if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[2]) == pgid:
                found.append(int(entry.name))
    return found


def kill_marked(marker: str, grace_s: float = 0.0, groups: tuple[int, ...] = ()) -> int:
    """TERM (then, after `grace_s`, KILL) every process carrying `marker` or in one of `groups`
    (a process that rewrites its title, as Ray's agents do, can lose its environment's marker);
    returns how many."""

    def targets() -> list[int]:
        return sorted({*marked_pids(marker), *(p for g in groups for p in group_pids(g))})

    pids = targets()
    if grace_s > 0:
        _signal_all(pids, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline and any(_alive(pid) for pid in pids):
            time.sleep(0.1)
    _signal_all(targets() if grace_s > 0 else pids, signal.SIGKILL)
    return len(pids)


def _signal_all(pids: list[int], signum: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signum)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")
