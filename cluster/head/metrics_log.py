"""The run's metrics stream on the head: every record from every rank goes to `metrics.jsonl`,
numeric train/eval fields are mirrored to TensorBoard (and MLflow and Weights & Biases when
configured), and records wait in memory for the launcher's live display.

Gathered "train" windows are summarized here (step-time percentiles, stragglers, see
trainer/formats/metrics.py), so every reader of the stream sees the same figures.
"""

from __future__ import annotations

import json
import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cluster.head.mirror import QueuedMirror
from cluster.head.mlflow import MlflowLogger
from cluster.head.wandb import WandbLogger, WandbTarget
from trainer.formats.metrics import StragglerDetector, summarize_window
from trainer.formats.rundir import METRICS_FILE, TENSORBOARD_DIR

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Trackers:
    """The experiment trackers the stream is mirrored to besides TensorBoard."""

    mlflow_run: tuple[str, str] | None = None  # (tracking URI, run id), run made by the launcher
    wandb: WandbTarget | None = None


class MetricsLog:
    """Thread-safe: the collector's control thread, its commit thread and its watchdog write."""

    def __init__(self, run_dir: Path, trackers: Trackers | None = None) -> None:
        trackers = trackers or Trackers()
        self.run_dir = run_dir
        self._file = (run_dir / METRICS_FILE).open("a")
        self._pending: list[dict[str, Any]] = []
        self._tensorboard: Any = None
        self._stragglers = StragglerDetector()
        self._lock = threading.RLock()
        # Trackers are mirrors behind queues: never in the collector's critical path.
        self._mirrors: list[QueuedMirror] = []
        if trackers.mlflow_run:
            mlflow = MlflowLogger(*trackers.mlflow_run)
            self._mirrors.append(QueuedMirror(mlflow, "MLflow", self._warn))
        if trackers.wandb:
            wandb = WandbLogger(trackers.wandb, run_dir)
            self._mirrors.append(QueuedMirror(wandb, "W&B", self._warn))

    def _warn(self, message: str) -> None:
        self.write({"event": "warning", "message": message})

    def restart(self) -> None:
        """A worker group (re)started: stragglers are judged afresh."""
        self._stragglers.reset()

    def write(self, record: dict[str, Any]) -> dict[str, Any]:
        """Store one record (summarized if it is a gathered window); returns what was stored."""
        with self._lock:
            record = summarize_window(record, self._stragglers)
            self._file.write(json.dumps(record) + "\n")
            self._file.flush()
            self._pending.append(record)
            try:
                self._write_scalars(record)
            except OSError as exc:  # a full disk: metrics.jsonl is the record, TensorBoard a view
                log.warning("TensorBoard events not written: %s", exc)
        for mirror in self._mirrors:
            mirror.log(record)  # queued: never waits for a tracker
        return record

    def drain(self) -> list[dict[str, Any]]:
        """Records stored since the last call, for the live display (its only consumer)."""
        with self._lock:
            pending, self._pending = self._pending, []
        return pending

    def close(self, status: str) -> None:
        """`status` is MLflow's: FINISHED, FAILED or KILLED (preempted)."""
        for mirror in self._mirrors:
            mirror.finish(status)
        with self._lock:
            self._file.close()
        if self._tensorboard is not None:
            self._tensorboard.close()

    def _write_scalars(self, record: dict[str, Any]) -> None:
        """Mirror numeric train/eval fields into TensorBoard event files."""
        if record.get("event") not in ("train", "eval") or "step" not in record:
            return
        if self._tensorboard is None:
            from tensorboardX import SummaryWriter

            self._tensorboard = SummaryWriter(str(self.run_dir / TENSORBOARD_DIR))
        for key, value in record.items():
            if (
                key not in ("step", "event")
                and isinstance(value, int | float)
                and not isinstance(value, bool)
            ):
                self._tensorboard.add_scalar(f"{record['event']}/{key}", value, record["step"])
        self._tensorboard.flush()
