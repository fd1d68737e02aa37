"""Checkpoints in an object store (`output.checkpoint_uri`: s3://, gs://, any pyarrow.fs URI),
with the same atomic rules as on the head's disk (checkpoints.py), designed for a store that has
no rename:

    <uri>/
      step-40.<attempt>/     one prefix per save attempt: a restarted worker group gets a new
        ds/..., acc/...      attempt id, so its objects never mix with a crashed attempt's
        trainer_state_rank{R}.json
        manifest.json        written by the head once every rank's files are in; lists every file
        manifest.sig         with size and sha256, and the prefix itself (signed, signing.py)
        COMPLETE             written last: a prefix without it is never resumed or exported

A tag (`step-40`) is complete when some prefix of it holds COMPLETE; when a restart re-saved the
same step, the newest commit wins and the older prefix is deleted. Deleting (pruning, discarding
a crashed attempt) removes COMPLETE first, so a half-deleted prefix is never taken as complete;
whatever is left without a marker is removed when the next worker group starts.

The head only lists sizes when it verifies (`verify`); every byte is hashed where it is
downloaded (`download`), by the ranks on resume and by `ftlaunch export`. Torch-free.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeGuard

import pyarrow.fs as pafs

from trainer.formats.checkpoints import (
    CHECKPOINT_MANIFEST,
    COMPLETE_MARKER,
    CheckpointStore,
    CorruptCheckpointError,
    check_signature,
    newest_of,
)
from trainer.formats.names import UnsafeNameError, check_name, check_tag, confined
from trainer.formats.signing import SIGNATURE_FILE, CheckpointSigning

_PREFIX = re.compile(r"(step-\d+)\.([0-9a-f]{12})")
_CHUNK = 8 << 20
_COMMIT_FILES = (CHECKPOINT_MANIFEST, SIGNATURE_FILE, COMPLETE_MARKER)


def new_attempt() -> str:
    return uuid.uuid4().hex[:12]


def checked_prefix(prefix: object, tag: str) -> str:
    """`prefix` if it is a save attempt's prefix of checkpoint `tag` (`step-N.<attempt>`).

    Raises:
        UnsafeNameError: anything else (it comes from another process).
    """
    match = _PREFIX.fullmatch(prefix) if isinstance(prefix, str) else None
    if match is None or match.group(1) != tag:
        raise UnsafeNameError(f"checkpoint prefix {prefix!r}: not an attempt of {tag}")
    return match.group(0)


class ObjectCheckpointStore:
    """Checkpoints under one pyarrow.fs URI: stage, commit, list, verify, download, prune.

    Credentials and endpoints come from the URI's query and the environment, as for shards in a
    store (trainer/formats/shard_stores.py)."""

    def __init__(
        self, uri: str, keep_last: int = 2, signing: CheckpointSigning | None = None
    ) -> None:
        self.filesystem, base = pafs.FileSystem.from_uri(uri)
        self.base = base.rstrip("/")
        self.where = f"{uri.split('://', 1)[0]}://{self.base}"  # without the query's options
        self.keep_last = keep_last
        self.signing = signing
        self.attempt = new_attempt()

    def describe(self, tag: str) -> str:
        return f"{self.where}/{tag}"

    # --- writing (ranks upload, the head commits)
    def staging_dir(self, tag: str) -> str:
        """The prefix this attempt's save of `tag` goes to (relative to the store's root)."""
        return f"{check_tag(tag)}.{self.attempt}"

    def upload(self, prefix: str, local_dir: Path) -> dict[str, str]:
        """Every file below `local_dir` to `prefix`; returns name -> sha256 of what was sent."""
        digests = {}
        for path in sorted(p for p in local_dir.rglob("*") if p.is_file()):
            name = path.relative_to(local_dir).as_posix()
            digest = hashlib.sha256()
            with path.open("rb") as src, self._output(prefix, name) as dst:
                while chunk := src.read(_CHUNK):
                    digest.update(chunk)
                    dst.write(chunk)
            digests[name] = digest.hexdigest()
        return digests

    def commit(
        self, tag: str, state: dict[str, Any], known_sha256: dict[str, str] | None = None
    ) -> str:
        """Write the manifest (and its signature) for this attempt's prefix of `tag`, then
        COMPLETE; drop an older commit of the same tag; prune beyond keep_last.

        Raises:
            CorruptCheckpointError: a file a rank reported is not in the store.
        """
        prefix = self.staging_dir(tag)
        listed = self._listing().get(prefix, {})
        known = known_sha256 or {}
        missing = sorted(set(known) - set(listed))
        if missing:
            raise CorruptCheckpointError(f"{self.where}/{prefix}/{missing[0]}: reported, not found")
        files = {
            name: {"bytes": size, "sha256": known.get(name) or self._sha256(prefix, name)}
            for name, size in sorted(listed.items())
            if name not in _COMMIT_FILES
        }
        manifest = {"tag": tag, "prefix": prefix, "files": files, "state": state}
        text = json.dumps(manifest | {"committed_at": time.time()}, indent=1, sort_keys=True)
        self._write(prefix, CHECKPOINT_MANIFEST, text.encode())
        if self.signing is not None:
            self._write(prefix, SIGNATURE_FILE, (self.signing.sign(text.encode()) + "\n").encode())
        self._write(prefix, COMPLETE_MARKER, tag.encode())
        for other in self._complete_prefixes().get(tag, []):
            if other != prefix:
                self._delete(other)
        self.prune()
        return prefix

    def is_complete(self, tag: str) -> bool:
        """Whether this attempt's save of `tag` was committed."""
        return COMPLETE_MARKER in self._listing().get(self.staging_dir(tag), {})

    def discard_staging(self, tag: str) -> None:
        self._delete(self.staging_dir(tag))

    def discard_incomplete(self) -> list[str]:
        """Start a new attempt and remove every prefix without COMPLETE (a crashed save or
        deletion). Only safe while no save is in flight. Returns the prefixes removed."""
        self.attempt = new_attempt()
        leftovers = [p for p, names in self._listing().items() if COMPLETE_MARKER not in names]
        for prefix in leftovers:
            self._delete(prefix)
        return sorted(leftovers)

    def prune(self) -> None:
        """Delete complete checkpoints beyond keep_last, oldest first (COMPLETE goes first)."""
        complete = self.complete()
        for _, manifest in complete[: max(len(complete) - self.keep_last, 0)]:
            self._delete(manifest["prefix"])

    # --- reading (resume, export)
    def complete(self) -> list[tuple[str, dict[str, Any]]]:
        """(tag, manifest) of every complete checkpoint, oldest commit first."""
        found = []
        for tag, prefixes in self._complete_prefixes().items():
            manifests = [m for m in map(self._manifest, prefixes) if m is not None]
            if manifests:
                found.append((tag, max(manifests, key=lambda m: m["committed_at"])))
        return sorted(found, key=lambda item: item[1]["committed_at"])

    def latest(self, run_id: str | None = None) -> tuple[str, dict[str, Any]] | None:
        return newest_of(self.complete(), run_id)

    def check_signed(self, tag: str) -> bytes:
        """The manifest of `tag`, as bytes, after checking its signature.

        Raises:
            CorruptCheckpointError: no complete checkpoint `tag`.
            UnsignedCheckpointError: no signature, or one made with another key.
        """
        prefix = self._prefix_of(tag)
        manifest = self._read(prefix, CHECKPOINT_MANIFEST) or b""
        signature = (self._read(prefix, SIGNATURE_FILE) or b"").decode(errors="replace")
        check_signature(self.signing, tag, manifest, signature, self.describe(prefix))
        return manifest

    def verify(self, tag: str) -> dict[str, Any]:
        """The signed manifest of `tag` after checking that every file it lists is in the store
        with its size (the bytes are hashed where they are downloaded).

        Raises:
            CorruptCheckpointError: naming the first missing or truncated file, or a name or
                prefix that reaches outside the checkpoint.
        """
        manifest = json.loads(self.check_signed(tag))
        prefix = self._prefix_of(tag)
        where = f"{self.describe(prefix)}/{CHECKPOINT_MANIFEST}"
        if manifest.get("tag") != tag or manifest.get("prefix") != prefix:
            raise CorruptCheckpointError(f"{where}: written for {manifest.get('prefix')!r}")
        listed = self._listing().get(prefix, {})
        for name, entry in manifest["files"].items():
            try:
                check_name(name)
            except UnsafeNameError as exc:
                raise CorruptCheckpointError(f"{where}: {exc}") from None
            if listed.get(name) != entry["bytes"]:
                raise CorruptCheckpointError(
                    f"{self.describe(prefix)}/{name}: does not match the checkpoint manifest "
                    "(missing or truncated)"
                )
        return manifest

    def download(
        self, manifest: dict[str, Any], wanted: Callable[[str], bool], target: Path
    ) -> Path:
        """The files of a verified `manifest` that `wanted` names, into `target`, each checked
        against the manifest's sha256.

        Raises:
            CorruptCheckpointError: a file whose bytes do not match.
            UnsafeNameError: a prefix or name from the manifest that is not a checkpoint's.
        """
        prefix = checked_prefix(manifest.get("prefix"), check_tag(manifest.get("tag")))
        for name, entry in manifest["files"].items():
            if wanted(name):
                self._fetch(prefix, name, entry["sha256"], confined(target, name))
        return target

    def download_checkpoint(self, tag: str, target: Path) -> Path:
        """A verified local copy of checkpoint `tag` in `target`, laid out as on the head's disk
        (so the local reader verifies it again, and export reads it as any other)."""
        manifest_bytes = self.check_signed(tag)
        manifest = self.verify(tag)
        self.download(manifest, lambda name: True, target)
        (target / CHECKPOINT_MANIFEST).write_bytes(manifest_bytes)
        (target / COMPLETE_MARKER).write_text(tag)
        return target

    # --- objects
    def _path(self, prefix: str, name: str = "") -> str:
        return "/".join(part for part in (self.base, prefix, name) if part)

    def _output(self, prefix: str, name: str) -> Any:
        path = self._path(prefix, check_name(name))
        if isinstance(self.filesystem, pafs.LocalFileSystem):  # a file:// store needs parents
            self.filesystem.create_dir(path.rsplit("/", 1)[0], recursive=True)
        return self.filesystem.open_output_stream(path)

    def _write(self, prefix: str, name: str, data: bytes) -> None:
        with self._output(prefix, name) as fh:
            fh.write(data)

    def _read(self, prefix: str, name: str) -> bytes | None:
        """The object's bytes; None only when it does not exist (deleted since it was listed).

        Raises:
            OSError: the store failed (unreachable, refused): never taken as "no checkpoint".
        """
        try:
            with self.filesystem.open_input_stream(self._path(prefix, name)) as fh:
                return fh.read()
        except FileNotFoundError:
            return None

    def _sha256(self, prefix: str, name: str) -> str:
        digest = hashlib.sha256()
        with self.filesystem.open_input_stream(self._path(prefix, name)) as fh:
            while chunk := fh.read(_CHUNK):
                digest.update(chunk)
        return digest.hexdigest()

    def _fetch(self, prefix: str, name: str, sha256: str, target: Path) -> None:
        target.parent.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha256()
        source = self.filesystem.open_input_stream(self._path(prefix, name))
        with source as src, target.open("wb") as dst:
            while chunk := src.read(_CHUNK):
                digest.update(chunk)
                dst.write(chunk)
        if digest.hexdigest() != sha256:
            raise CorruptCheckpointError(
                f"{self.describe(prefix)}/{name}: does not match the checkpoint manifest "
                "(corrupted or truncated)"
            )

    def _delete(self, prefix: str) -> None:
        """COMPLETE first, then every other object, one by one: pyarrow's delete_dir on S3
        also writes a `dir/` marker object for the parent, which a store may refuse (moto: 403)."""
        names = sorted(self._listing().get(prefix, {}), key=lambda n: n != COMPLETE_MARKER)
        for name in names:
            self.filesystem.delete_file(self._path(prefix, name))
        if isinstance(self.filesystem, pafs.LocalFileSystem):  # empty directories remain there
            self.filesystem.delete_dir(self._path(prefix))

    def _listing(self) -> dict[str, dict[str, int]]:
        """prefix -> name -> size of every object below the root in a `step-N.<attempt>`.

        Raises:
            OSError: the store failed, or its bucket is gone: a listing that cannot be made is
                never an empty one (a resume would silently start from step 0).
        """
        selector = pafs.FileSelector(self.base, recursive=True, allow_not_found=True)
        infos = self.filesystem.get_file_info(selector)
        if not infos:
            self._check_bucket()
        found: dict[str, dict[str, int]] = {}
        for info in infos:
            prefix, _, name = info.path[len(self.base) + 1 :].partition("/")
            if info.type == pafs.FileType.File and name and _PREFIX.fullmatch(prefix):
                found.setdefault(prefix, {})[name] = info.size or 0
        return found

    def _check_bucket(self) -> None:
        """An empty prefix is a store without checkpoints yet; a missing bucket is an error.

        Raises:
            FileNotFoundError: the bucket (the URI's first component) does not exist.
        """
        if isinstance(self.filesystem, pafs.LocalFileSystem):
            return  # a directory that is not there yet holds no checkpoints
        bucket = self.base.split("/", 1)[0]
        if self.filesystem.get_file_info(bucket).type == pafs.FileType.NotFound:
            raise FileNotFoundError(f"{self.where}: bucket {bucket!r} does not exist")

    def _complete_prefixes(self) -> dict[str, list[str]]:
        found: dict[str, list[str]] = {}
        for prefix, names in self._listing().items():
            if COMPLETE_MARKER in names and CHECKPOINT_MANIFEST in names:
                found.setdefault(prefix.split(".")[0], []).append(prefix)
        return found

    def _manifest(self, prefix: str) -> dict[str, Any] | None:
        try:
            manifest = json.loads(self._read(prefix, CHECKPOINT_MANIFEST) or b"")
        except json.JSONDecodeError:
            return None  # unreadable manifest: not a usable checkpoint
        ok = isinstance(manifest, dict) and manifest.get("prefix") == prefix
        return manifest if ok and "committed_at" in manifest else None

    def _prefix_of(self, tag: str) -> str:
        complete = dict(self.complete())
        if check_tag(tag) not in complete:
            raise CorruptCheckpointError(f"{self.describe(tag)}: not a complete checkpoint")
        return complete[tag]["prefix"]


def is_store_uri(location: str | Path) -> TypeGuard[str]:
    """Whether checkpoints at `location` go to a store (output.checkpoint_uri), not a directory."""
    return isinstance(location, str) and "://" in location


def open_checkpoint_store(
    location: str | Path, keep_last: int = 2, signing: CheckpointSigning | None = None
) -> CheckpointStore | ObjectCheckpointStore:
    """Where checkpoints go: a store behind a pyarrow.fs URI, or a directory on the head."""
    if is_store_uri(location):
        return ObjectCheckpointStore(location, keep_last, signing)
    return CheckpointStore(location, keep_last, signing)


def probe_writable(uri: str) -> None:
    """Write and delete one small object below `uri`, so a store that cannot be written is
    found before anything starts.

    Raises:
        OSError: the store refused (no bucket, no credentials, no permission), or ValueError
            (pyarrow.lib.ArrowInvalid) for a URI pyarrow cannot open.
    """
    filesystem, base = pafs.FileSystem.from_uri(uri)
    path = f"{base.rstrip('/')}/.ftlaunch-probe-{new_attempt()}"
    if isinstance(filesystem, pafs.LocalFileSystem):
        filesystem.create_dir(base, recursive=True)
    with filesystem.open_output_stream(path) as fh:
        fh.write(b"probe")
    filesystem.delete_file(path)
