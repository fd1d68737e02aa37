"""One small actor per node: it collects its ranks' heartbeats and forwards them to the head as
one batch a second (less often on large clusters: the head says when), so the head's load grows
with nodes, not ranks x frequency, and stays bounded; it relays the
launcher's stop request back; and when the head's watchdog names a stall, it collects the stacks
of its ranks (py-spy, or faulthandler where py-spy cannot read a process) and kills the ranks it
is told to. Created by the collector (which owns it, so it lives as long as the run) on the
first request from a rank of its node.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from cluster.actors import ActorHandle, get
from cluster.worker.heartbeat import (
    CALL_TIMEOUT_S,
    FAULTHANDLER_SIGNAL,
    HEARTBEAT_INTERVAL_S,
    faulthandler_file,
)

STACK_TIMEOUT_S = 20.0
FAULTHANDLER_WAIT_S = 2.0

log = logging.getLogger(__name__)


def process_state(pid: int) -> str:
    """The kernel's one-letter state of `pid` (R running, S sleeping, T stopped, ...), or "gone"."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return "gone"
    state = stat.rsplit(")", 1)[1].split()[0]
    return "gone" if state in ("Z", "X") else state


def py_spy() -> str | None:
    """py-spy comes with ray[default]; it sits beside this interpreter in a virtualenv."""
    beside = Path(sys.executable).with_name("py-spy")
    return str(beside) if beside.is_file() else shutil.which("py-spy")


class NodeAgent:
    def __init__(
        self, collector: ActorHandle, node_id: str, interval_s: float = HEARTBEAT_INTERVAL_S
    ) -> None:
        self._collector = collector
        self._node_id = node_id
        self._host = socket.gethostname()
        self._interval_s = interval_s
        self._beats: dict[int, dict[str, Any]] = {}
        self._stop = False
        threading.Thread(target=self._forward, name="ftlaunch-node-beats", daemon=True).start()

    def beat(self, beat: dict[str, Any]) -> bool:
        """One rank's heartbeat; returns whether the launcher asked to stop."""
        self._beats[beat["rank"]] = beat
        return self._stop

    def batch(self) -> list[dict[str, Any]]:
        """The newest beat of every rank on this node, with its process's state now: a silent
        rank whose process is gone died (Ray restarts it), one that is there has stalled."""
        return [
            b | {"process": process_state(b["pid"]), "host": self._host}
            for b in list(self._beats.values())
        ]

    def _forward(self) -> None:
        failing = False
        while True:
            try:
                stop, self._interval_s = get(
                    self._collector.heartbeats.remote(self._node_id, self.batch()),
                    timeout=CALL_TIMEOUT_S,
                )
                self._stop = self._stop or stop
                failing = False
            except Exception as exc:  # retried next interval; the head judges the silence
                if not failing:
                    log.warning(
                        "node %s: heartbeats not delivered (%s); retrying", self._node_id, exc
                    )
                failing = True
            time.sleep(self._interval_s)

    def dump_stacks(self, pids: dict[int, int]) -> dict[int, str]:
        """Python stacks of every thread of each rank (rank -> pid), read without stopping it."""
        tool = py_spy()
        running = {}
        for rank, pid in pids.items():
            if tool is not None:
                command = [tool, "dump", "--nonblocking", "--pid", str(pid)]
                running[rank] = subprocess.Popen(
                    command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
                )
        stacks = {}
        for rank, pid in pids.items():
            text = _output(running.get(rank))
            stacks[rank] = text if text is not None else _faulthandler_stacks(pid)
        return stacks

    def kill(self, pids: list[int]) -> None:
        """SIGKILL stalled ranks: Ray Train sees a worker die and restarts the group."""
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                continue


def _output(process: subprocess.Popen[str] | None) -> str | None:
    if process is None:
        return None
    try:
        out, _ = process.communicate(timeout=STACK_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()
        return None
    return f"# collected by py-spy\n{out}" if process.returncode == 0 else None


def _faulthandler_stacks(pid: int) -> str:
    """Ask the rank's faulthandler (armed by its Heartbeat) to write its stacks, then read them."""
    target = faulthandler_file(pid)
    try:
        before = target.stat().st_size if target.exists() else 0
        os.kill(pid, FAULTHANDLER_SIGNAL)
    except OSError as exc:
        return f"# no stacks: py-spy could not read pid {pid} and faulthandler failed: {exc}\n"
    deadline = time.monotonic() + FAULTHANDLER_WAIT_S
    while time.monotonic() < deadline and target.stat().st_size == before:
        time.sleep(0.1)
    text = target.read_text()[before:]
    if not text:
        return f"# no stacks: py-spy could not read pid {pid}, and it did not answer faulthandler's signal (stopped?)\n"
    return f"# collected by faulthandler\n{text}"


def start_node_agent(collector: ActorHandle, node_id: str) -> ActorHandle:
    """The agent of `node_id`, pinned there, using no CPU slot (called by the collector)."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    actor_cls: ActorHandle = ray.remote(NodeAgent)
    return actor_cls.options(
        num_cpus=0,
        max_concurrency=4,  # beats keep flowing while stacks are collected
        scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=node_id, soft=False),
    ).remote(collector, node_id)
