"""What the training loop needs from whoever runs it: where metrics, artifacts and checkpoints
go, where shards come from, and whether to stop.

`cluster/worker/` hands in Ray-backed implementations; `trainer/local.py` and tests hand in
plain-file ones, so the loop runs without Ray and the Ray wiring is tested without a model.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import pyarrow as pa

    from trainer.formats.shards import ShardManifest


class Reporter(Protocol):
    def report(self, record: dict[str, Any]) -> None:
        """Send one metrics record (a step, an evaluation, or the final summary) to the head."""
        ...


class ArtifactSink(Protocol):
    def put_dir(self, local_dir: Path, name: str) -> None:
        """Copy a finished local directory to `<run dir>/<name>` on the head node."""
        ...

    def put_file(self, local_file: Path, name: str) -> None:
        """Copy one local file to `<run dir>/<name>` on the head node."""
        ...


class CheckpointSink(Protocol):
    """Where checkpoint shards go (the head node) and come back from on resume."""

    def local_dir(self, tag: str) -> Path:
        """A directory on this node where this rank writes its part of checkpoint `tag`."""
        ...

    def submit(self, tag: str, local_dir: Path, state: dict[str, Any] | None) -> None:
        """Hand this rank's files of `tag` to the head and return at once; the delivery may go
        on in the background. Rank 0 passes the training state. The head commits `tag`
        atomically once every rank's files have arrived."""
        ...

    def wait_committed(self, tag: str, timeout_s: float) -> None:
        """Block until this rank's deliveries are done and `tag` is committed on the head.
        Raises if the head could not commit it."""
        ...

    def abandon(self, tag: str, error: str) -> None:
        """This rank could not write its part of `tag` (the caller raises next): the head
        records the checkpoint as failed, so nobody waits for it and the run says why."""
        ...

    def latest(self) -> str | None:
        """The checkpoint to resume from, if any."""
        ...

    def fetch(self, tag: str, wanted: Callable[[str], bool]) -> Path:
        """A local directory holding the verified files of `tag` for which `wanted(name)` is true."""
        ...

    def cleanup(self) -> None:
        """Remove node-local scratch copies. Raises if the last checkpoint this rank submitted
        was not committed (the run must not end as if it had been)."""
        ...


# What a rank can be doing, published by the training loop (trainer/loop/train.py); "setup" comes
# before the first step and "done" after the last. The head's watchdog reads them from heartbeats
# (cluster/head/watchdog.py) and, when ranks wait for each other, names the one furthest behind
# in this order. "collective" is last: a rank inside a collective has finished its own work of
# the step and waits for the others.
PHASES = ("setup", "data", "forward", "backward", "optimizer", "eval", "save", "collective", "done")


class PhaseBoard(Protocol):
    def enter(self, phase: str, step: int) -> None:
        """This rank now works on `phase` of optimizer step `step`. Called by the training loop at
        every phase change, so it must cost next to nothing: a heartbeat thread reads it."""
        ...


class StopSignal(Protocol):
    def requested(self) -> bool:
        """Whether the launcher asked to checkpoint and stop now (preemption)."""
        ...


class ShardStore(Protocol):
    """Where one prepared split's shards are read from (a local disk, a URI, the head node)."""

    def read_manifest(self) -> ShardManifest: ...

    def read_block(self, shard_file: str, batch_index: int) -> pa.RecordBatch:
        """One record batch of one shard, read into memory (not memory-mapped)."""
        ...


@dataclass(frozen=True)
class WorkerIO:
    """Everything a worker talks to outside itself, handed to the recipe in one piece."""

    reporter: Reporter
    artifacts: ArtifactSink
    open_store: Callable[[str], ShardStore]
    checkpoints: CheckpointSink | None = None
    stop: StopSignal | None = None
    phases: PhaseBoard | None = None
