"""Worker side of checkpoints-to-head: ranks on the head node write straight into the head's
staging directory; ranks elsewhere write to node-local scratch, send their files to the head
over authenticated TCP streams (stream.py; the actor only says where and with which nonce), then
delete the scratch. On resume each remote rank downloads
only the files it needs, each checked against the committed manifest.

Every rank learns the outcome of each checkpoint it submitted: before its next save and at the
end it asks the head, and raises CheckpointNotCommitted if the commit failed (a full disk), so a
run never ends as if a checkpoint existed that does not."""

from __future__ import annotations

import hashlib
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cluster.actors import ActorHandle, get
from cluster.auth.channel import key_from_token
from cluster.auth.token import load_token
from cluster.worker.files import CHUNK_BYTES
from cluster.worker.stream import send_dir
from trainer.formats.checkpoints import CorruptCheckpointError
from trainer.formats.names import confined

CALL_TIMEOUT_S = 60.0
# How long a rank waits for the head to finish committing its previous checkpoint (hashing and
# fsync of a large checkpoint take minutes; the commit runs while training goes on).
COMMIT_WAIT_S = 1800.0
POLL_S = 0.05


class CheckpointNotCommitted(RuntimeError):
    """The head could not commit a checkpoint (the message says which and why)."""


class RayCheckpointSink:
    def __init__(
        self,
        collector: ActorHandle,
        on_head: bool,
        run_id: str,
        resume_tag: str | None,
        rank: int,
    ) -> None:
        self._collector = collector
        token = load_token()
        self._key = key_from_token(token) if token else None  # None: the head hands one out
        self.on_head = on_head
        self._run_id = run_id
        self._resume_tag = resume_tag
        self._rank = rank
        self._scratch: list[Path] = []
        self._delivery: threading.Thread | None = None
        self._delivery_error: BaseException | None = None
        self._last_tag: str | None = None  # the newest checkpoint submitted, outcome not yet seen

    def local_dir(self, tag: str) -> Path:
        if self.on_head:
            return Path(get(self._collector.checkpoint_staging.remote(tag)))
        scratch = Path(tempfile.mkdtemp(prefix=f"ftlaunch-{tag}-"))
        self._scratch.append(scratch)
        return scratch

    def submit(self, tag: str, local_dir: Path, state: dict[str, Any] | None) -> None:
        """Ranks on the head wrote straight into the head's staging: just say so. Ranks elsewhere
        stream their files in a background thread, one checkpoint at a time, so training goes on
        while the bytes travel (the previous delivery is finished first: bounded disk use).

        Raises:
            CheckpointNotCommitted: the previous checkpoint could not be committed.
        """
        self._finish_delivery()
        self._check_last()
        self._last_tag = tag
        if state is not None:
            state = state | {"run_id": self._run_id}
        if self.on_head:
            get(
                self._collector.checkpoint_submitted.remote(tag, self._rank, state),
                timeout=CALL_TIMEOUT_S,
            )
            return
        self._delivery = threading.Thread(
            target=self._deliver, args=(tag, local_dir, state), name="ftlaunch-ckpt", daemon=True
        )
        self._delivery.start()

    def wait_committed(self, tag: str, timeout_s: float) -> None:
        self._finish_delivery()
        self._await_commit(tag, timeout_s)
        self._last_tag = None

    def abandon(self, tag: str, error: str) -> None:
        self._last_tag = None
        get(
            self._collector.checkpoint_failed.remote(tag, self._rank, error), timeout=CALL_TIMEOUT_S
        )

    def _check_last(self) -> None:
        if self._last_tag is not None:
            tag, self._last_tag = self._last_tag, None
            self._await_commit(tag, COMMIT_WAIT_S)

    def _await_commit(self, tag: str, timeout_s: float) -> None:
        """Until the head has committed `tag`; a failed commit or no answer in time raises."""
        deadline = time.monotonic() + timeout_s
        while True:
            state, reason = get(
                self._collector.checkpoint_status.remote(tag), timeout=CALL_TIMEOUT_S
            )
            if state == "committed":
                return
            if state == "failed":
                raise CheckpointNotCommitted(f"checkpoint {tag} was not committed: {reason}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{tag}: not committed on the head within {timeout_s:.0f}s")
            time.sleep(POLL_S)

    def _deliver(self, tag: str, local_dir: Path, state: dict[str, Any] | None) -> None:
        try:
            self._send(tag, local_dir, state)
        except BaseException as exc:  # re-raised in the training thread at the next save
            self._delivery_error = exc
            self._collector.checkpoint_failed.remote(tag, self._rank, f"delivery failed: {exc}")
        finally:
            shutil.rmtree(local_dir, ignore_errors=True)

    def _send(self, tag: str, local_dir: Path, state: dict[str, Any] | None) -> None:
        """This rank's files of `tag` to the head, then "submitted" (StoreCheckpointSink uploads
        them to the object store instead)."""
        self.send_files(tag, local_dir)
        get(self._collector.checkpoint_submitted.remote(tag, self._rank, state))

    def send_files(self, tag: str, local_dir: Path) -> None:
        """Every file below `local_dir` into the head's staging of `tag`.

        Raises:
            OSError: a stream broke, timed out, or the head refused a file.
        """
        route = get(self._collector.checkpoint_route.remote(tag), timeout=CALL_TIMEOUT_S)
        key = self._key or bytes.fromhex(route["key"])
        send_dir(route, key, tag, self._rank, local_dir)

    def _finish_delivery(self) -> None:
        if self._delivery is not None:
            self._delivery.join()
            self._delivery = None
        if self._delivery_error is not None:
            error, self._delivery_error = self._delivery_error, None
            raise RuntimeError(f"checkpoint delivery to the head failed: {error}") from error

    def latest(self) -> str | None:
        """After a restart, this run's newest checkpoint; otherwise the one `--resume` chose."""
        return get(self._collector.checkpoint_latest.remote(self._run_id)) or self._resume_tag

    def fetch(self, tag: str, wanted: Callable[[str], bool]) -> Path:
        manifest = get(self._collector.checkpoint_verified.remote(tag))
        if self.on_head:
            return Path(get(self._collector.checkpoint_path.remote(tag)))
        scratch = Path(tempfile.mkdtemp(prefix=f"ftlaunch-resume-{tag}-"))
        self._scratch.append(scratch)
        for name, entry in manifest["files"].items():
            if wanted(name):  # names come from the head: confined below the scratch directory
                self._download(tag, name, entry, confined(scratch, name))
        return scratch

    def cleanup(self) -> None:
        try:
            self._finish_delivery()
            self._check_last()
        finally:
            for scratch in self._scratch:
                shutil.rmtree(scratch, ignore_errors=True)
            self._scratch.clear()

    def _download(self, tag: str, name: str, entry: dict[str, Any], target: Path) -> None:
        target.parent.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha256()
        with target.open("wb") as fh:
            for offset in range(0, entry["bytes"], CHUNK_BYTES):
                chunk = get(self._collector.checkpoint_read.remote(tag, name, offset, CHUNK_BYTES))
                digest.update(chunk)
                fh.write(chunk)
        if digest.hexdigest() != entry["sha256"]:
            raise CorruptCheckpointError(
                f"{tag}/{name}: download does not match the checkpoint manifest"
            )
