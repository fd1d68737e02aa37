"""Worker side of checkpoints-to-head: ranks on the head node write straight into the head's
staging directory; ranks elsewhere write to node-local scratch and stream their files to the
collector in bounded chunks, then delete the scratch. On resume each remote rank downloads
only the files it needs, each checked against the committed manifest."""

from __future__ import annotations

import hashlib
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ray

from cluster.collector import CHUNK_BYTES, CollectorSink
from trainer.config.checkpoints import CorruptCheckpointError


class RayCheckpointSink:
    def __init__(
        self, collector: ray.actor.ActorHandle, on_head: bool, run_id: str, resume_tag: str | None
    ) -> None:
        self._collector = collector
        self._files = CollectorSink(collector)
        self.on_head = on_head
        self._run_id = run_id
        self._resume_tag = resume_tag
        self._scratch: list[Path] = []

    def local_dir(self, tag: str) -> Path:
        if self.on_head:
            return Path(ray.get(self._collector.checkpoint_staging.remote(tag)))
        scratch = Path(tempfile.mkdtemp(prefix=f"ftlaunch-{tag}-"))
        self._scratch.append(scratch)
        return scratch

    def upload(self, tag: str, local_dir: Path) -> None:
        if self.on_head:
            return
        for path in sorted(p for p in local_dir.rglob("*") if p.is_file()):
            name = path.relative_to(local_dir).as_posix()
            self._files.stream_file(
                path, ray.get(self._collector.begin_checkpoint_file.remote(tag, name))
            )
        shutil.rmtree(local_dir, ignore_errors=True)

    def commit(self, tag: str, state: dict[str, Any]) -> None:
        ray.get(self._collector.checkpoint_commit.remote(tag, state | {"run_id": self._run_id}))

    def latest(self) -> str | None:
        """After a restart, this run's newest checkpoint; otherwise the one `--resume` chose."""
        return ray.get(self._collector.checkpoint_latest.remote(self._run_id)) or self._resume_tag

    def fetch(self, tag: str, wanted: Callable[[str], bool]) -> Path:
        manifest = ray.get(self._collector.checkpoint_verified.remote(tag))
        if self.on_head:
            return Path(ray.get(self._collector.checkpoint_path.remote(tag)))
        scratch = Path(tempfile.mkdtemp(prefix=f"ftlaunch-resume-{tag}-"))
        self._scratch.append(scratch)
        for name, entry in manifest["files"].items():
            if wanted(name):
                self._download(tag, name, entry, scratch / name)
        return scratch

    def cleanup(self) -> None:
        for scratch in self._scratch:
            shutil.rmtree(scratch, ignore_errors=True)
        self._scratch.clear()

    def _download(self, tag: str, name: str, entry: dict[str, Any], target: Path) -> None:
        target.parent.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha256()
        with target.open("wb") as fh:
            for offset in range(0, entry["bytes"], CHUNK_BYTES):
                chunk = ray.get(
                    self._collector.checkpoint_read.remote(tag, name, offset, CHUNK_BYTES)
                )
                digest.update(chunk)
                fh.write(chunk)
        if digest.hexdigest() != entry["sha256"]:
            raise CorruptCheckpointError(
                f"{tag}/{name}: download does not match the checkpoint manifest"
            )
