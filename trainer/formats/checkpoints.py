"""The on-disk checkpoint format on the head node, and its atomic commit.

    checkpoints/
      .tmp-step-40/          being written: never read by resume
      step-40/               complete: every file listed with size and sha256 in manifest.json,
        manifest.json        plus the training state (step, epoch, stream position, world size,
        manifest.sig         config fingerprint), signed for this output.dir (signing.py);
        COMPLETE             COMPLETE is written last, then the rename
        ds/...               engine.backend deepspeed: DeepSpeed's engine state (model states on
                             rank 0, ZeRO shards per rank)
        acc/...              engine.backend accelerate: `Accelerator.save_state` (see rank_needs)
        trainer_state_rank{R}.json   training progress, data-stream position and RNG states
        best_rank{R}.pt      this rank's share of the best-so-far weights (plain tensors)

Shared by the head-side committer (cluster/head/), plain local runs (trainer/local.py), resume and
export (launcher/), torch-free.
"""

from __future__ import annotations

import json
import re
import shutil
import time
from pathlib import Path
from typing import Any

from trainer.formats.durable import fsync_path, replace_atomically, sha256_file, write_synced
from trainer.formats.names import UnsafeNameError, check_tag, confined
from trainer.formats.signing import SIGNATURE_FILE, CheckpointSigning

CHECKPOINT_MANIFEST = "manifest.json"
DS_TAG = "ds"
ACC_TAG = "acc"
MODEL_STATES = f"{DS_TAG}/mp_rank_00_model_states.pt"
_PER_RANK = (
    re.compile(r"zero_pp_rank_(\d+)_"),  # a ZeRO shard (deepspeed, or deepspeed via accelerate)
    re.compile(r"random_states_(\d+)\.pkl$"),  # Accelerate's per-process RNG state
)
COMPLETE_MARKER = "COMPLETE"
STAGING_PREFIX = ".tmp-"
TRASH_PREFIX = ".trash-"


class CorruptCheckpointError(ValueError):
    """A committed checkpoint whose files do not match its manifest."""


class UnsignedCheckpointError(CorruptCheckpointError):
    """A checkpoint whose manifest is not signed for this output.dir (written by another user or
    run directory, copied or moved here, or altered since)."""


class UnsafeCheckpointError(CorruptCheckpointError):
    """A checkpoint file that names something beyond the plain data a checkpoint holds (a
    pickle that would run code when loaded); refused before anything of it is unpickled."""


def step_tag(step: int) -> str:
    return f"step-{step}"


def is_step_tag(name: str) -> bool:
    try:
        check_tag(name)
    except UnsafeNameError:
        return False
    return True


def _regular_files(directory: Path) -> list[Path]:
    """Every file under `directory`, refusing symbolic links (a rank on the head writes straight
    into staging; a link there would put a file from elsewhere into the checkpoint).

    Raises:
        UnsafeNameError: a symbolic link.
    """
    found = []
    for path in sorted(directory.rglob("*")):
        if path.is_symlink():
            raise UnsafeNameError(f"{path}: a symbolic link in a checkpoint being committed")
        if path.is_file():
            found.append(path)
    return found


def trainer_state_file(rank: int) -> str:
    return f"trainer_state_rank{rank}.json"


def best_weights_file(rank: int) -> str:
    return f"best_rank{rank}.pt"


def rank_needs(name: str, rank: int) -> bool:
    """Whether rank `rank` needs checkpoint file `name` to resume.

    DeepSpeed opens only its own ZeRO shard, plus rank 0's model states. Accelerate's layout:
      acc/model.safetensors, optimizer.bin, scheduler.bin   DDP: full states, read by every rank
      acc/pytorch_model/...                                 DeepSpeed via Accelerate: as ds/ above
      acc/pytorch_model_fsdp_0/, acc/optimizer_0/           FSDP: torch DCP, `__R_0.distcp` per rank
      acc/random_states_R.pkl                               per rank
    A DCP directory is fetched whole by every rank: DCP stores a replicated entry (the optimizer
    step count, param groups) once, in whichever rank's file balances the sizes, so a rank may
    read from files other than its own.
    """
    if name in (trainer_state_file(rank), best_weights_file(rank)):
        return True
    if name.startswith(f"{DS_TAG}/"):
        return name == MODEL_STATES or f"zero_pp_rank_{rank}_" in name
    if name.startswith(f"{ACC_TAG}/"):
        for pattern in _PER_RANK:
            match = pattern.search(name)
            if match:
                return int(match.group(1)) == rank
        return not name.endswith("/latest")  # DeepSpeed's pointer file; we load by tag
    return False


class CheckpointStore:
    """Checkpoints under one directory: stage, commit atomically, list, verify, prune."""

    def __init__(
        self, root: str | Path, keep_last: int = 2, signing: CheckpointSigning | None = None
    ) -> None:
        self.root = Path(root)
        self.keep_last = keep_last
        self.signing = signing  # None: neither signed nor checked (local runs without a head)

    def staging_dir(self, tag: str) -> Path:
        path = self.root / f"{STAGING_PREFIX}{check_tag(tag)}"
        path.mkdir(parents=True, exist_ok=True)
        return path

    def commit(
        self, tag: str, state: dict[str, Any], known_sha256: dict[str, str] | None = None
    ) -> Path:
        """Checksum, fsync and publish `.tmp-<tag>` as `<tag>`; then prune beyond keep_last.

        `known_sha256` maps file names to digests already computed while receiving them (the
        collector hashes every transferred chunk as it writes it), so they are not read twice.
        """
        staging = self.root / f"{STAGING_PREFIX}{check_tag(tag)}"
        files = _regular_files(staging)
        known = known_sha256 or {}
        listing = {}
        for path in files:
            name = path.relative_to(staging).as_posix()
            digest = known.get(name) or sha256_file(path)
            listing[name] = {"bytes": path.stat().st_size, "sha256": digest}
        manifest = {"tag": tag, "files": listing, "state": state, "committed_at": time.time()}
        text = json.dumps(manifest, indent=1, sort_keys=True)
        write_synced(staging / CHECKPOINT_MANIFEST, text)
        if self.signing is not None:
            write_synced(staging / SIGNATURE_FILE, self.signing.sign(text.encode()) + "\n")
        for path in files:
            fsync_path(path)
        write_synced(staging / COMPLETE_MARKER, tag)
        fsync_path(staging)
        final = self.root / tag
        replace_atomically(staging, final)  # a restart re-saving the same step replaces it
        self.prune()
        return final

    def complete(self) -> list[tuple[str, dict[str, Any]]]:
        """(tag, manifest) of every complete checkpoint, oldest commit first."""
        found = []
        for path in self.root.glob("step-*"):
            if path.is_symlink() or not is_step_tag(path.name):
                continue  # only directories a commit made: never followed elsewhere
            if (path / COMPLETE_MARKER).is_file() and (path / CHECKPOINT_MANIFEST).is_file():
                try:
                    found.append((path.name, json.loads((path / CHECKPOINT_MANIFEST).read_text())))
                except (OSError, json.JSONDecodeError):
                    continue  # unreadable manifest: not a usable checkpoint
        return sorted(found, key=lambda item: item[1]["committed_at"])

    def latest(self, run_id: str | None = None) -> tuple[str, dict[str, Any]] | None:
        """The newest complete checkpoint (optionally: written by run `run_id`)."""
        return newest_of(self.complete(), run_id)

    def verify(self, tag: str) -> dict[str, Any]:
        """The manifest of `tag` after checking every file's size and sha256.

        Raises:
            CorruptCheckpointError: naming the first missing or corrupted file, or a name that
                reaches outside the checkpoint.
        """
        directory = self.root / check_tag(tag)
        if directory.is_symlink() or not (directory / COMPLETE_MARKER).is_file():
            raise CorruptCheckpointError(
                f"{directory}: not a complete checkpoint (no {COMPLETE_MARKER})"
            )
        manifest = json.loads(self.check_signed(tag))
        if manifest.get("tag") != tag:
            raise CorruptCheckpointError(
                f"{directory / CHECKPOINT_MANIFEST}: written for {manifest.get('tag')!r}, not {tag}"
            )
        for name, entry in manifest["files"].items():
            try:
                path = confined(directory, name)
            except UnsafeNameError as exc:
                raise CorruptCheckpointError(f"{directory / CHECKPOINT_MANIFEST}: {exc}") from None
            if (
                not path.is_file()
                or path.stat().st_size != entry["bytes"]
                or sha256_file(path) != entry["sha256"]
            ):
                raise CorruptCheckpointError(
                    f"{path}: does not match the checkpoint manifest (corrupted or truncated)"
                )
        return manifest

    def check_signed(self, tag: str) -> bytes:
        """The manifest of `tag`, as bytes, after checking its signature (unless this store is
        unsigned or the user vouched for this checkpoint).

        Raises:
            UnsignedCheckpointError: no signature, or one made with another key.
        """
        directory = self.root / check_tag(tag)
        manifest = (directory / CHECKPOINT_MANIFEST).read_bytes()
        signature = directory / SIGNATURE_FILE
        text = signature.read_text() if signature.is_file() and not signature.is_symlink() else ""
        check_signature(self.signing, tag, manifest, text, str(directory))
        return manifest

    @property
    def where(self) -> str:
        return str(self.root)

    def describe(self, tag: str) -> str:
        return str(self.root / tag)

    def is_complete(self, tag: str) -> bool:
        return (self.root / check_tag(tag) / COMPLETE_MARKER).is_file()

    def discard_staging(self, tag: str) -> None:
        shutil.rmtree(self.root / f"{STAGING_PREFIX}{check_tag(tag)}", ignore_errors=True)

    def prune(self) -> None:
        """Delete complete checkpoints beyond keep_last, oldest first.

        Each is renamed away before it is deleted, so a crash halfway through a deletion never
        leaves a `step-N` that looks complete but has lost files.
        """
        complete = self.complete()
        for tag, _ in complete[: max(len(complete) - self.keep_last, 0)]:
            trash = self.root / f"{TRASH_PREFIX}{tag}"
            shutil.rmtree(trash, ignore_errors=True)
            (self.root / tag).rename(trash)
            shutil.rmtree(trash, ignore_errors=True)

    def discard_incomplete(self) -> list[str]:
        """Remove what a crashed save or prune left behind (staging and trash directories).

        Only safe while no save is in flight: the collector calls it when a worker group starts.
        Returns the names removed.
        """
        if not self.root.is_dir():
            return []
        leftovers = [
            p for p in self.root.iterdir() if p.name.startswith((STAGING_PREFIX, TRASH_PREFIX))
        ]
        for path in leftovers:
            shutil.rmtree(path, ignore_errors=True)
        return sorted(p.name for p in leftovers)


def newest_of(
    complete: list[tuple[str, dict[str, Any]]], run_id: str | None
) -> tuple[str, dict[str, Any]] | None:
    """The newest of `complete` (oldest first), optionally only among those run `run_id` wrote."""
    candidates = [c for c in complete if run_id is None or c[1]["state"].get("run_id") == run_id]
    return candidates[-1] if candidates else None


def check_signature(
    signing: CheckpointSigning | None, tag: str, manifest: bytes, signature: str, where: str
) -> None:
    """Unless unsigned or vouched for, `manifest` must carry this output.dir's `signature`.

    Raises:
        UnsignedCheckpointError: no signature, or one made with another key.
    """
    if signing is None or tag == signing.trusted:
        return
    if not signing.is_signed(manifest, signature):
        raise UnsignedCheckpointError(
            f"{where}: its manifest is not signed for this output.dir (written under "
            "another user or directory, copied or moved here, or altered since)"
        )
