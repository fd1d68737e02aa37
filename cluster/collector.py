"""The head-side collector: a Ray actor pinned to the head node that receives what workers send.

Workers never write to the head's disk themselves (there may be no shared filesystem); they call
this actor, which appends metrics to `metrics.jsonl` and reassembles artifact files from bounded
chunks, each file verified by sha256 and renamed into place only when complete.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import ray

from cluster.mlflow_logger import MlflowLogger
from trainer.config.checkpoints import CheckpointStore
from trainer.config.step_metrics import StragglerDetector, summarize_window

CHUNK_BYTES = 4 << 20
# Chunks sent but not yet written on the head: bounds memory to MAX_IN_FLIGHT x CHUNK_BYTES.
MAX_IN_FLIGHT = 4


class RunCollector:
    """Plain class (tested without Ray); `collector_actor()` wraps it as a pinned Ray actor."""

    def __init__(
        self,
        run_dir: str,
        checkpoint_dir: str | None = None,
        keep_last: int = 2,
        mlflow_run: tuple[str, str] | None = None,
    ) -> None:
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._metrics = (self.run_dir / "metrics.jsonl").open("a")
        self._pending: list[dict[str, Any]] = []
        self._open: dict[str, tuple[Path, Any, Any]] = {}
        self.checkpoints = CheckpointStore(
            checkpoint_dir or self.run_dir / "checkpoints", keep_last
        )
        self._verified: dict[str, dict[str, Any]] = {}
        # checkpoint files received from remote ranks: handle -> (tag, name), tag -> name -> sha
        self._checkpoint_files: dict[str, tuple[str, str]] = {}
        self._received: dict[str, dict[str, str]] = {}
        # checkpoints waiting for ranks: tag -> (ranks that delivered, rank 0's state)
        self._submitted: dict[str, tuple[set[int], dict[str, Any]]] = {}
        self._committed: set[str] = set()
        self._tensorboard: Any = None
        self._stop_requested = False
        self._preempted_tag: str | None = None
        self.starts = 0
        self._stragglers = StragglerDetector()
        self._mlflow = MlflowLogger(*mlflow_run) if mlflow_run else None

    def report(self, record: dict[str, Any]) -> None:
        if record.get("event") == "preempted":
            self._preempted_tag = record.get("tag")
        if record.get("event") == "start":
            self.starts += 1
            self._stragglers.reset()  # a restarted worker group starts a fresh comparison
            # A save interrupted by a crash must not leak stale files into this attempt's
            # save of the same step; nothing of this attempt is being saved yet.
            discarded = self.checkpoints.discard_incomplete()
            self._received.clear()
            self._submitted.clear()
            record = record | {"attempt": self.starts, "discarded_partial": discarded}
        record = summarize_window(record, self._stragglers)
        self._metrics.write(json.dumps(record) + "\n")
        self._metrics.flush()
        self._write_scalars(record)
        if self._mlflow is not None:
            self._mlflow.log(record)
        self._pending.append(record)

    def _write_scalars(self, record: dict[str, Any]) -> None:
        """Mirror numeric train/eval fields into TensorBoard event files (tensorboard/)."""
        if record.get("event") not in ("train", "eval") or "step" not in record:
            return
        if self._tensorboard is None:
            from tensorboardX import SummaryWriter

            self._tensorboard = SummaryWriter(str(self.run_dir / "tensorboard"))
        for key, value in record.items():
            if (
                key not in ("step", "event")
                and isinstance(value, int | float)
                and not isinstance(value, bool)
            ):
                self._tensorboard.add_scalar(f"{record['event']}/{key}", value, record["step"])
        self._tensorboard.flush()

    def request_stop(self) -> None:
        """The launcher got SIGTERM: workers checkpoint and stop at their next step."""
        self._stop_requested = True

    def stop_requested(self) -> bool:
        return self._stop_requested

    def preempted_tag(self) -> str | None:
        """The checkpoint committed in answer to a stop request, if the workers got that far."""
        return self._preempted_tag

    def starts_seen(self) -> int:
        """How many times the worker group started (1 + restarts after failures)."""
        return self.starts

    def drain(self) -> list[dict[str, Any]]:
        """Records reported since the last call, for the live display (its only consumer)."""
        pending, self._pending = self._pending, []
        return pending

    def begin_file(self, name: str) -> str:
        return self._begin(self._target(self.run_dir, name))

    def begin_checkpoint_file(self, tag: str, name: str) -> str:
        handle = self._begin(self._target(self.checkpoints.staging_dir(tag), name))
        self._checkpoint_files[handle] = (tag, name)
        return handle

    def checkpoint_staging(self, tag: str) -> str:
        """Where ranks on the head node write their part of checkpoint `tag` directly."""
        return str(self.checkpoints.staging_dir(tag))

    def checkpoint_submitted(self, tag: str, rank: int, state: dict[str, Any] | None) -> None:
        """Rank `rank`'s files of `tag` are all here; commit once every rank's are (rank 0 brings
        the state, which says how many ranks there are)."""
        ranks, known_state = self._submitted.setdefault(tag, (set(), {}))
        ranks.add(rank)
        if state is not None:
            known_state.update(state)
        if not known_state or len(ranks) < known_state["world_size"]:
            return
        started = time.perf_counter()
        self.checkpoints.commit(tag, known_state, self._received.pop(tag, {}))
        del self._submitted[tag]
        self._committed.add(tag)
        commit_s = time.perf_counter() - started
        self.report(
            {
                "event": "committed",
                "tag": tag,
                "step": known_state.get("step"),
                "commit_s": commit_s,
            }
        )

    def checkpoint_is_committed(self, tag: str) -> bool:
        return tag in self._committed

    def checkpoint_latest(self, run_id: str) -> str | None:
        """The newest complete checkpoint this run wrote (after a restart), if any."""
        latest = self.checkpoints.latest(run_id)
        return latest[0] if latest else None

    def checkpoint_verified(self, tag: str) -> dict[str, Any]:
        """The manifest of `tag`, every file checked once per run (cached for the other ranks)."""
        if tag not in self._verified:
            self._verified[tag] = self.checkpoints.verify(tag)
        return self._verified[tag]

    def checkpoint_path(self, tag: str) -> str:
        return str(self.checkpoints.root / tag)

    def checkpoint_read(self, tag: str, name: str, offset: int, length: int) -> bytes:
        with self._target(self.checkpoints.root / tag, name).open("rb") as fh:
            fh.seek(offset)
            return fh.read(length)

    def _begin(self, target: Path) -> str:
        target.parent.mkdir(parents=True, exist_ok=True)
        handle = uuid.uuid4().hex
        partial = target.with_name(f".{target.name}.{handle}.part")
        self._open[handle] = (target, partial.open("wb"), hashlib.sha256())
        return handle

    def write_chunk(self, handle: str, data: bytes) -> None:
        _, fh, digest = self._open[handle]
        fh.write(data)
        digest.update(data)

    def end_file(self, handle: str, sha256: str) -> None:
        target, fh, digest = self._open.pop(handle)
        partial = Path(fh.name)
        fh.flush()
        os.fsync(fh.fileno())
        fh.close()
        if digest.hexdigest() != sha256:
            partial.unlink(missing_ok=True)
            raise OSError(f"{target}: transfer corrupted (sha256 mismatch)")
        os.replace(partial, target)
        if handle in self._checkpoint_files:
            tag, name = self._checkpoint_files.pop(handle)
            self._received.setdefault(tag, {})[name] = sha256

    def close(self, status: str = "FINISHED") -> None:
        """End of the run; `status` is MLflow's: FINISHED, FAILED or KILLED (preempted)."""
        if self._mlflow is not None:
            self._mlflow.finish(status)
        self._metrics.close()
        if self._tensorboard is not None:
            self._tensorboard.close()

    @staticmethod
    def _target(root: Path, name: str) -> Path:
        target = (root / name).resolve()
        if root.resolve() not in target.parents:
            raise ValueError(f"artifact name {name!r} escapes {root}")
        return target


def collector_actor(
    run_dir: Path, checkpoint_dir: Path, keep_last: int, mlflow_run: tuple[str, str] | None
) -> ray.actor.ActorHandle:
    """Start the collector on this (the driver's, i.e. head's) node; it uses no CPU slot."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    here = ray.get_runtime_context().get_node_id()
    actor_cls = ray.remote(num_cpus=0, max_concurrency=1)(RunCollector)
    return actor_cls.options(
        scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=here, soft=False)
    ).remote(str(run_dir), str(checkpoint_dir), keep_last, mlflow_run)


class CollectorReporter:
    """Worker-side Reporter: fire-and-forget calls, ordered by Ray's per-caller actor ordering."""

    def __init__(self, collector: ray.actor.ActorHandle) -> None:
        self._collector = collector

    def report(self, record: dict[str, Any]) -> None:
        self._collector.report.remote(record)


class CollectorStopSignal:
    """Worker-side StopSignal: a daemon thread polls the collector, so steps never wait on it."""

    def __init__(self, collector: ray.actor.ActorHandle, interval_s: float = 0.5) -> None:
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
                if ray.get(self._collector.stop_requested.remote(), timeout=10):
                    self._requested.set()
            except Exception:  # the head went away: the run is ending anyway
                return
            time.sleep(interval_s)


class CollectorSink:
    """Worker-side ArtifactSink: streams files to the head in CHUNK_BYTES pieces.

    At most MAX_IN_FLIGHT chunks are in flight, so neither side holds a whole file in memory.
    """

    def __init__(self, collector: ray.actor.ActorHandle, chunk_bytes: int = CHUNK_BYTES) -> None:
        self._collector = collector
        self._chunk_bytes = chunk_bytes

    def put_dir(self, local_dir: Path, name: str) -> None:
        for path in sorted(p for p in local_dir.rglob("*") if p.is_file()):
            self.put_file(path, f"{name}/{path.relative_to(local_dir).as_posix()}")

    def put_file(self, local_file: Path, name: str) -> None:
        self.stream_file(local_file, ray.get(self._collector.begin_file.remote(name)))

    def stream_file(self, local_file: Path, handle: str) -> None:
        digest = hashlib.sha256()
        in_flight: list[ray.ObjectRef] = []
        with local_file.open("rb") as fh:
            while True:
                chunk = np.empty(self._chunk_bytes, dtype=np.uint8)
                size = fh.readinto(memoryview(chunk))
                if not size:
                    break
                chunk = chunk[:size]
                # A numpy array travels through the object store once and the collector reads it
                # in place (zero-copy); bytes would be copied again on the receiving side.
                in_flight.append(self._collector.write_chunk.remote(handle, chunk))
                digest.update(chunk)  # releases the GIL: overlaps with Ray's send
                if len(in_flight) >= MAX_IN_FLIGHT:
                    ray.get(in_flight.pop(0))
        ray.get(in_flight)
        ray.get(self._collector.end_file.remote(handle, digest.hexdigest()))
