"""Plain-filesystem Reporter, ArtifactSink and CheckpointSink: run the loop without Ray (tests,
benchmarks, the overhead baseline)."""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from trainer.formats.checkpoints import COMPLETE_MARKER, CheckpointStore
from trainer.formats.metrics import StragglerDetector, summarize_window
from trainer.formats.rundir import METRICS_FILE
from trainer.formats.shard_stores import open_store
from trainer.protocols import WorkerIO


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


class LocalCheckpointSink:
    """Checkpoints in a local CheckpointStore, for ranks that all see this disk (tests, single-node
    runs without Ray). Each rank marks its part of a save as written; rank 0, which brings the
    training state, waits for every rank's mark and commits."""

    MARK_PREFIX = ".written-rank"

    def __init__(
        self, root: Path, keep_last: int = 2, resume_tag: str | None = None, wait_s: float = 600
    ) -> None:
        self.store = CheckpointStore(root, keep_last)
        self._resume_tag = resume_tag
        self._wait_s = wait_s

    def local_dir(self, tag: str) -> Path:
        return self.store.staging_dir(tag)

    def submit(self, tag: str, local_dir: Path, state: dict[str, Any] | None) -> None:
        rank = int(os.environ.get("RANK", "0"))
        (local_dir / f"{self.MARK_PREFIX}{rank}").touch()
        if state is None:
            return
        marks = [local_dir / f"{self.MARK_PREFIX}{r}" for r in range(state["world_size"])]
        _wait_until(lambda: all(m.exists() for m in marks), self._wait_s, f"{tag}: ranks' files")
        for mark in marks:
            mark.unlink()
        self.store.commit(tag, state)

    def wait_committed(self, tag: str, timeout_s: float) -> None:
        done = self.store.root / tag / COMPLETE_MARKER
        _wait_until(done.exists, timeout_s, f"{tag}: commit")

    def abandon(self, tag: str, error: str) -> None:
        return None  # rank 0 commits here, and only once every rank wrote its part

    def latest(self) -> str | None:
        return self._resume_tag

    def fetch(self, tag: str, wanted: Callable[[str], bool]) -> Path:
        self.store.verify(tag)
        return self.store.root / tag

    def cleanup(self) -> None:
        return None


def local_io(run_dir: Path, checkpoints: LocalCheckpointSink | None = None) -> WorkerIO:
    """Metrics and artifacts into `run_dir` on this disk, shards read where they lie."""
    return WorkerIO(
        reporter=JsonlReporter(run_dir / METRICS_FILE),
        artifacts=DirectorySink(run_dir),
        open_store=open_store,
        checkpoints=checkpoints,
    )


def _wait_until(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not there within {timeout_s:.0f}s")
        time.sleep(0.05)
