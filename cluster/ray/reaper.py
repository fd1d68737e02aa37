"""The embedded Ray dies with the launcher, however the launcher ends (even SIGKILL).

    python -m cluster.ray.reaper PARENT_PID MARKER [PGID]

Started by the launcher in a session of its own (a terminal's Ctrl-C does not reach it), it
waits for the launcher to exit, then stops every process carrying the run's marker in its
environment (Ray's GCS, raylet, dashboard and workers all inherit it from the launcher) and
every process of the embedded cluster's process group (Ray's agents rewrite their titles over
their environment, marker included): TERM, then KILL after a grace. After a clean exit there is nothing left to stop and it just exits.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

from cluster.procs import is_running, kill_marked, process_start

MARKER_ENV = "FTLAUNCH_RUN_MARKER"
POLL_S = 0.5
GRACE_S = 3.0


def start_reaper(marker: str, pgid: int | None = None) -> subprocess.Popen[bytes]:
    """Watch this process; the caller sets MARKER_ENV=marker in the environment Ray inherits,
    and names the embedded cluster's process group once it has one."""
    group = [str(pgid)] if pgid is not None else []
    return subprocess.Popen(
        [sys.executable, "-m", "cluster.ray.reaper", str(os.getpid()), marker, *group],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        env={k: v for k, v in os.environ.items() if k != MARKER_ENV},  # never reap itself
    )


def main(argv: list[str]) -> int:
    parent, marker = int(argv[0]), argv[1]
    groups = tuple(int(g) for g in argv[2:])
    born = process_start(parent)
    while born is not None and is_running(parent, born):
        time.sleep(POLL_S)
    kill_marked(f"{MARKER_ENV}={marker}", grace_s=GRACE_S, groups=groups)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
