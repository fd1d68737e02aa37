"""The two things the training loop needs from whoever runs it.

`cluster/` hands in Ray-backed implementations; tests hand in local ones, so the loop runs
without Ray and the Ray wiring is tested without a model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol


class Reporter(Protocol):
    def report(self, record: dict[str, Any]) -> None:
        """Send one metrics record (a step, an evaluation, or the final summary) to the head."""


class ArtifactSink(Protocol):
    def put_dir(self, local_dir: Path, name: str) -> None:
        """Copy a finished local directory to `<run dir>/<name>` on the head node."""

    def put_file(self, local_file: Path, name: str) -> None:
        """Copy one local file to `<run dir>/<name>` on the head node."""
