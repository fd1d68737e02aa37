"""The head-side collector: one Ray actor pinned to the head node that everything workers send
goes through. Workers never write to the head's disk themselves (there may be no shared
filesystem).

The actor is a thin dispatcher; the work is done by
    MetricsLog           (metrics_log.py)   metrics.jsonl, TensorBoard, MLflow, W&B, live display
    FileReceiver         (files.py)         artifact files in bounded, verified chunks
    CheckpointCommitter  (checkpoints.py)   checkpoint staging, atomic commit, resume reads
plus the stop flag that turns the launcher's SIGTERM into a preemption checkpoint.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import ray

from cluster.actors import ActorHandle
from cluster.head.checkpoints import CheckpointCommitter
from cluster.head.files import FileReceiver
from cluster.head.metrics_log import MetricsLog, Trackers
from trainer.formats.checkpoints import CheckpointStore
from trainer.formats.rundir import CHECKPOINT_DIR
from trainer.formats.signing import CheckpointSigning


class RunCollector:
    """Plain class (tested without Ray); `collector_actor()` wraps it as a pinned Ray actor."""

    def __init__(
        self,
        run_dir: str,
        checkpoint_dir: str | None = None,
        keep_last: int = 2,
        trackers: Trackers | None = None,
        signing: CheckpointSigning | None = None,
    ) -> None:
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.metrics = MetricsLog(self.run_dir, trackers or Trackers())
        self.files = FileReceiver()
        # Commits are signed and resumes checked with the output.dir's key (signing.py).
        store = CheckpointStore(checkpoint_dir or self.run_dir / CHECKPOINT_DIR, keep_last, signing)
        self.checkpoints = CheckpointCommitter(store, self.files)
        self._stop_requested = False
        self._preempted_tag: str | None = None
        self.starts = 0

    # --- metrics
    def report(self, record: dict[str, Any]) -> None:
        if record.get("event") == "preempted":
            self._preempted_tag = record.get("tag")
        if record.get("event") == "start":
            self.starts += 1
            self.metrics.restart()
            discarded = self.checkpoints.restart()
            record = record | {"attempt": self.starts, "discarded_partial": discarded}
        self.metrics.write(record)

    def drain(self) -> list[dict[str, Any]]:
        return self.metrics.drain()

    def starts_seen(self) -> int:
        """How many times the worker group started (1 + restarts after failures)."""
        return self.starts

    def close(self, status: str = "FINISHED") -> None:
        """End of the run; `status` is MLflow's: FINISHED, FAILED or KILLED (preempted)."""
        self.metrics.close(status)

    # --- stop flag (preemption)
    def request_stop(self) -> None:
        """The launcher got SIGTERM: workers checkpoint and stop at their next step."""
        self._stop_requested = True

    def stop_requested(self) -> bool:
        return self._stop_requested

    def preempted_tag(self) -> str | None:
        """The checkpoint committed in answer to a stop request, if the workers got that far."""
        return self._preempted_tag

    # --- files
    def begin_file(self, name: str) -> str:
        return self.files.begin(self.run_dir, name)

    def write_chunk(self, handle: str, data: bytes) -> None:
        self.files.write_chunk(handle, data)

    def end_file(self, handle: str, sha256: str) -> None:
        is_checkpoint = self.checkpoints.is_checkpoint_file(handle)
        self.files.end(handle, sha256)
        if is_checkpoint:
            self.checkpoints.end_file(handle, sha256)

    # --- checkpoints
    def begin_checkpoint_file(self, tag: str, name: str) -> str:
        return self.checkpoints.begin_file(tag, name)

    def checkpoint_staging(self, tag: str) -> str:
        """Where ranks on the head node write their part of checkpoint `tag` directly."""
        return str(self.checkpoints.staging(tag))

    def checkpoint_submitted(self, tag: str, rank: int, state: dict[str, Any] | None) -> None:
        """Rank `rank`'s files of `tag` are all here; commit once every rank's are."""
        started = time.perf_counter()
        committed = self.checkpoints.submitted(tag, rank, state)
        if committed is not None:
            commit_s = time.perf_counter() - started
            record = {"event": "committed", "tag": tag, "step": committed.get("step")}
            self.report(record | {"commit_s": commit_s})

    def checkpoint_is_committed(self, tag: str) -> bool:
        return self.checkpoints.is_committed(tag)

    def checkpoint_latest(self, run_id: str) -> str | None:
        return self.checkpoints.latest(run_id)

    def checkpoint_verified(self, tag: str) -> dict[str, Any]:
        return self.checkpoints.verified(tag)

    def checkpoint_path(self, tag: str) -> str:
        return str(self.checkpoints.path(tag))

    def checkpoint_read(self, tag: str, name: str, offset: int, length: int) -> bytes:
        return self.checkpoints.read(tag, name, offset, length)


def collector_actor(
    run_dir: Path,
    checkpoint_dir: Path,
    keep_last: int,
    trackers: Trackers,
    signing: CheckpointSigning | None = None,
) -> ActorHandle:
    """Start the collector on this (the driver's, i.e. head's) node; it uses no CPU slot."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    here = ray.get_runtime_context().get_node_id()
    actor_cls: ActorHandle = ray.remote(RunCollector)
    return actor_cls.options(
        num_cpus=0,
        max_concurrency=1,
        scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=here, soft=False),
    ).remote(str(run_dir), str(checkpoint_dir), keep_last, trackers, signing)
