"""Plain-filesystem Reporter and ArtifactSink: run the loop without Ray (tests, benchmarks)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from trainer.config.step_metrics import StragglerDetector, summarize_window


class JsonlReporter:
    """Appends each record as one JSON line; keeps them in memory too for inspection."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.records: list[dict[str, Any]] = []
        self._stragglers = StragglerDetector()
        path.parent.mkdir(parents=True, exist_ok=True)

    def report(self, record: dict[str, Any]) -> None:
        record = summarize_window(record, self._stragglers)
        self.records.append(record)
        with self.path.open("a") as fh:
            fh.write(json.dumps(record) + "\n")


class DirectorySink:
    """Copies artifacts into a local run directory (the head *is* this machine)."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir

    def put_dir(self, local_dir: Path, name: str) -> None:
        shutil.copytree(local_dir, self.run_dir / name, dirs_exist_ok=True)

    def put_file(self, local_file: Path, name: str) -> None:
        (self.run_dir / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(local_file, self.run_dir / name)
