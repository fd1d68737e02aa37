"""Worker side of checkpoints to an object store (`output.checkpoint_uri`): every rank, on the
head node or not, writes its part to node-local scratch and uploads it straight to the store's
prefix for this attempt (trainer/formats/object_checkpoints.py), then tells the head the files'
sha256; the head commits the manifest there. On resume each rank downloads only the files it
needs from the store, each checked against the manifest the head verified.

Everything else (one delivery at a time in the background, learning each commit's outcome) is
RayCheckpointSink's: only where the bytes go differs."""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cluster.actors import ActorHandle, get
from cluster.worker.checkpoints import CALL_TIMEOUT_S, RayCheckpointSink
from trainer.config.spec import RunSpec
from trainer.formats.names import check_tag
from trainer.formats.object_checkpoints import ObjectCheckpointStore, checked_prefix
from trainer.protocols import CheckpointSink


class StoreCheckpointSink(RayCheckpointSink):
    def __init__(
        self, collector: ActorHandle, uri: str, run_id: str, resume_tag: str | None, rank: int
    ) -> None:
        # on_head=False: even on the head node, files go to the store, not the head's disk
        super().__init__(collector, False, run_id, resume_tag, rank)
        self._store = ObjectCheckpointStore(uri)

    def _send(self, tag: str, local_dir: Path, state: dict[str, Any] | None) -> None:
        prefix = get(self._collector.checkpoint_staging.remote(tag), timeout=CALL_TIMEOUT_S)
        digests = self._store.upload(checked_prefix(prefix, check_tag(tag)), local_dir)
        get(
            self._collector.checkpoint_uploaded.remote(tag, self._rank, digests, state),
            timeout=CALL_TIMEOUT_S,
        )

    def fetch(self, tag: str, wanted: Callable[[str], bool]) -> Path:
        manifest = get(self._collector.checkpoint_verified.remote(tag))
        scratch = Path(tempfile.mkdtemp(prefix=f"ftlaunch-resume-{tag}-"))
        self._scratch.append(scratch)
        return self._store.download(manifest, wanted, scratch)


def checkpoint_sink(
    spec: RunSpec, collector: ActorHandle, on_head: bool, rank: int
) -> CheckpointSink:
    """The one place that decides where this rank's checkpoint files go: the object store named
    by `output.checkpoint_uri`, or the head."""
    uri = spec.job.output.checkpoint_uri
    if uri:
        return StoreCheckpointSink(collector, uri, spec.run_id, spec.resume_tag, rank)
    return RayCheckpointSink(collector, on_head, spec.run_id, spec.resume_tag, rank)
