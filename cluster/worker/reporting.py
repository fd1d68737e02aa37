"""Worker-side Reporter: metrics go to the head's collector.

(The stop request no longer has a poll of its own: it comes back with every heartbeat's answer,
through the node agent, see heartbeat.py; at 1,024 ranks a poll per rank would be the head's
largest load.)"""

from __future__ import annotations

from typing import Any

from cluster.actors import ActorHandle


class CollectorReporter:
    """Worker-side Reporter: fire-and-forget calls, ordered by Ray's per-caller actor ordering."""

    def __init__(self, collector: ActorHandle) -> None:
        self._collector = collector

    def report(self, record: dict[str, Any]) -> None:
        self._collector.report.remote(record)
