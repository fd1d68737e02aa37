"""An experiment tracker (MLflow, W&B) kept out of the collector's critical path.

`QueuedMirror` sends a tracker's records from a queue on a thread of its own, keeps a record that
failed to go and retries it, and at the end waits a bounded time for the backlog. An outage is a
warning (the records are all in metrics.jsonl), never a lost record or a failed run.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

RETRY_S = 5.0
CLOSE_WAIT_S = 30.0

log = logging.getLogger(__name__)


class Tracker(Protocol):
    def log(self, record: dict[str, Any]) -> None: ...

    def finish(self, status: str) -> None: ...


class QueuedMirror:
    """A Tracker behind a queue and a thread; `warn` hears about outages (once each)."""

    def __init__(self, tracker: Tracker, name: str, warn: Callable[[str], None]) -> None:
        self._tracker, self._name, self._warn = tracker, name, warn
        self._queue: collections.deque[dict[str, Any]] = collections.deque()
        self._wake = threading.Condition()
        self._closing = False
        self._failing = False
        self._thread = threading.Thread(target=self._send_all, name=f"ftlaunch-{name}", daemon=True)
        self._thread.start()

    def log(self, record: dict[str, Any]) -> None:
        with self._wake:
            self._queue.append(record)
            self._wake.notify()

    def finish(self, status: str, wait_s: float = CLOSE_WAIT_S) -> None:
        """Send the backlog (at most `wait_s`), then the run's status; warn about what is left."""
        with self._wake:
            self._closing = True
            self._wake.notify()
        self._thread.join(wait_s)
        left = len(self._queue)
        if left or self._thread.is_alive():
            self._warn(
                f"{self._name} unreachable at the end: {left} records not mirrored"
                " (all are in metrics.jsonl)"
            )
            return
        try:
            self._tracker.finish(status)
        except Exception as exc:  # tracker clients raise many types
            self._warn(f"{self._name}: could not set the run's status {status}: {first_line(exc)}")

    def _send_all(self) -> None:
        while True:
            with self._wake:
                while not self._queue and not self._closing:
                    self._wake.wait()
                if not self._queue:
                    return
                record = self._queue[0]
            if self._send(record):
                self._queue.popleft()
            elif self._closing:
                return
            else:
                time.sleep(RETRY_S)

    def _send(self, record: dict[str, Any]) -> bool:
        try:
            self._tracker.log(record)
        except Exception as exc:  # kept at the head of the queue and retried
            if not self._failing:
                self._warn(
                    f"{self._name} unreachable ({first_line(exc)}); records queue and are retried"
                )
            self._failing = True
            return False
        if self._failing:
            log.warning("%s reachable again; sending the queued records", self._name)
        self._failing = False
        return True


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
