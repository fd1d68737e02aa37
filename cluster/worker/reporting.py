"""Worker-side Reporter and StopSignal: metrics go to the head's collector, and a stop request
(the launcher's SIGTERM) comes back from it."""

from __future__ import annotations

import threading
import time
from typing import Any

from cluster.actors import ActorHandle, get


class CollectorReporter:
    """Worker-side Reporter: fire-and-forget calls, ordered by Ray's per-caller actor ordering."""

    def __init__(self, collector: ActorHandle) -> None:
        self._collector = collector

    def report(self, record: dict[str, Any]) -> None:
        self._collector.report.remote(record)


class CollectorStopSignal:
    """Worker-side StopSignal: a daemon thread polls the collector, so steps never wait on it."""

    def __init__(self, collector: ActorHandle, interval_s: float = 0.5) -> None:
        self._collector = collector
        self._requested = threading.Event()
        threading.Thread(
            target=self._poll, args=(interval_s,), name="ftlaunch-stop", daemon=True
        ).start()

    def requested(self) -> bool:
        return self._requested.is_set()

    def _poll(self, interval_s: float) -> None:
        while not self._requested.is_set():
            try:
                if get(self._collector.stop_requested.remote(), timeout=10):
                    self._requested.set()
            except Exception:  # the head went away: the run is ending anyway
                return
            time.sleep(interval_s)
