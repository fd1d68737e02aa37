"""A rank's heartbeat: the training loop publishes its phase (trainer.protocols.PhaseBoard), a
daemon thread sends it to the node's agent about once a second, and the agent's answer carries
the launcher's stop request back (the StopSignal).

The training thread only ever assigns one tuple (`enter`), so publishing costs next to nothing
and a rank whose training thread is blocked (a collective nobody joins, a hung read) keeps
beating: the head sees it is alive but not moving. A rank whose whole process stops (SIGSTOP, a
wedged interpreter) stops beating: the head sees it silent. Both are judged on the head
(cluster/head/watchdog.py), with durations measured here so no clocks need to agree.
"""

from __future__ import annotations

import faulthandler
import logging
import signal
import statistics
import tempfile
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any

from cluster.actors import ActorHandle, get

HEARTBEAT_INTERVAL_S = 1.0
CALL_TIMEOUT_S = 10.0
# Where a rank's faulthandler writes its stacks when its node agent sends FAULTHANDLER_SIGNAL
# (the fallback when py-spy cannot read the process).
FAULTHANDLER_SIGNAL = signal.SIGUSR2
STEP_SAMPLES = 32

log = logging.getLogger(__name__)


def faulthandler_file(pid: int) -> Path:
    """The node-local file rank `pid` dumps its stacks into (see FAULTHANDLER_SIGNAL)."""
    return Path(tempfile.gettempdir()) / f"ftlaunch-stacks-{pid}.txt"


class StepClock:
    """This rank's median seconds per optimizer step, from the (step, phase entry time) pairs the
    heartbeat thread samples: steps may advance many times between two samples."""

    def __init__(self) -> None:
        self._last: tuple[int, float] | None = None
        self._samples: deque[float] = deque(maxlen=STEP_SAMPLES)

    def observe(self, step: int, entered: float) -> None:
        if self._last is not None and step > self._last[0] and entered > self._last[1]:
            self._samples.append((entered - self._last[1]) / (step - self._last[0]))
        if self._last is None or step != self._last[0]:
            self._last = (step, entered)

    def median_s(self) -> float | None:
        return statistics.median(self._samples) if self._samples else None


class Heartbeat:
    """Worker-side PhaseBoard and StopSignal: `enter` is called by the training loop, `requested`
    by it at every step; the thread in between talks to the node agent and retries (a timeout is
    not an answer: the agent may be busy or restarting, so the next beat tries again)."""

    def __init__(
        self, agent: ActorHandle, rank: int, pid: int, interval_s: float = HEARTBEAT_INTERVAL_S
    ) -> None:
        self._agent = agent
        self._rank, self._pid = rank, pid
        self._interval_s = interval_s
        self._current: tuple[str, int, float] = ("setup", 0, time.monotonic())
        self._stop = threading.Event()
        self._seq = 0
        self._clock = StepClock()
        self._failing = False
        self._dump_file: Any = None
        self._thread = threading.Thread(target=self._run, name="ftlaunch-heartbeat", daemon=True)

    def start(self) -> Heartbeat:
        """Begin beating; also arm faulthandler so the agent can get stacks without py-spy."""
        self._dump_file = faulthandler_file(self._pid).open("w")
        faulthandler.register(FAULTHANDLER_SIGNAL, file=self._dump_file, all_threads=True)
        self._thread.start()
        return self

    def enter(self, phase: str, step: int) -> None:
        self._current = (phase, step, time.monotonic())

    def requested(self) -> bool:
        return self._stop.is_set()

    def finish(self) -> None:
        """The rank is done: say so (the head stops judging it), then stop beating."""
        self.enter("done", self._current[1])
        self._send()
        faulthandler.unregister(FAULTHANDLER_SIGNAL)
        if self._dump_file is not None:
            self._dump_file.close()
            faulthandler_file(self._pid).unlink(missing_ok=True)

    def beat(self) -> dict[str, Any]:
        """The next heartbeat record (what the head's watchdog reads)."""
        phase, step, entered = self._current
        self._clock.observe(step, entered)
        self._seq += 1
        return {
            "rank": self._rank,
            "pid": self._pid,
            "seq": self._seq,
            "phase": phase,
            "step": step,
            "in_phase_s": round(time.monotonic() - entered, 3),
            "step_time_s": self._clock.median_s(),
        }

    def _run(self) -> None:
        while self._current[0] != "done":
            self._send()
            time.sleep(self._interval_s)

    def _send(self) -> None:
        try:
            if get(self._agent.beat.remote(self.beat()), timeout=CALL_TIMEOUT_S):
                self._stop.set()
            if self._failing:
                log.warning("rank %d: heartbeats reach the node agent again", self._rank)
            self._failing = False
        except Exception as exc:  # retried at the next beat; the head judges the silence
            if not self._failing:
                log.warning("rank %d: heartbeat not delivered (%s); retrying", self._rank, exc)
            self._failing = True
