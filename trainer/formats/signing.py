"""Checkpoint manifests signed with a key that never travels with a checkpoint.

A manifest's sha256 entries prove only that files did not change after the commit; whoever can
write `checkpoints/step-N` (a group-writable directory, a copied or downloaded run) could write
a matching manifest. So each committed manifest also gets `manifest.sig`: HMAC-SHA256 of the
manifest's bytes under a key that belongs to one output.dir of one user:

    key(output.dir) = HMAC-SHA256(user secret, "ftlaunch checkpoint key" + realpath(output.dir))

The user secret is 32 random bytes in `$XDG_STATE_HOME/ftlaunch/checkpoint.key` (default
`~/.local/state/ftlaunch/`), created 0600 in a 0700 directory and refused if it is a link, not
the user's, or readable by anyone else. It is never written into a run directory, so a copied
run, a run from another user or one moved to another path does not verify: `--resume` refuses
it unless the user vouches for it with `--trust-checkpoint PATH`. Torch-free: the launcher checks
signatures before a run, the head's collector signs each commit and checks each resume.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

SIGNATURE_FILE = "manifest.sig"
KEY_FILE = "checkpoint.key"
_KEY_CONTEXT = b"ftlaunch checkpoint key\0"


class SigningKeyError(ValueError):
    """The user's signing secret is unusable (a link, another owner, readable by others)."""


def default_key_file(environ: Mapping[str, str] | None = None) -> Path:
    """Where this user's signing secret lives: `$XDG_STATE_HOME/ftlaunch/checkpoint.key`."""
    env = os.environ if environ is None else environ
    state = env.get("XDG_STATE_HOME") or str(Path("~/.local/state").expanduser())
    return Path(state) / "ftlaunch" / KEY_FILE


def ensure_key_file(path: Path) -> Path:
    """Create the secret (0600, in a 0700 directory) unless it exists; check it either way.

    Raises:
        SigningKeyError: the file or its directory is a link, not ours, or open to others.
    """
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    _check_private(path.parent, is_dir=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except FileExistsError:
        read_key(path)
        return path
    with os.fdopen(fd, "w") as handle:
        handle.write(secrets.token_hex(32) + "\n")
    return path


def read_key(path: Path) -> bytes:
    """The secret in `path`, after checking nobody else could have written or read it.

    Raises:
        SigningKeyError: missing, a link, not ours, or open to others.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as exc:
        raise SigningKeyError(
            f"{path}: cannot read the checkpoint signing key ({exc.strerror})"
        ) from None
    with os.fdopen(fd) as handle:
        _check_mode(path, os.fstat(handle.fileno()), is_dir=False)
        text = handle.read().strip()
    if len(text) < 32:
        raise SigningKeyError(f"{path}: not a checkpoint signing key (too short)")
    return text.encode()


def _check_private(path: Path, is_dir: bool) -> None:
    _check_mode(path, os.lstat(path), is_dir)


def _check_mode(path: Path, info: os.stat_result, is_dir: bool) -> None:
    kind_ok = stat.S_ISDIR(info.st_mode) if is_dir else stat.S_ISREG(info.st_mode)
    if not kind_ok:
        raise SigningKeyError(
            f"{path}: must be a plain {'directory' if is_dir else 'file'}, not a link"
        )
    if info.st_uid != os.getuid():
        raise SigningKeyError(f"{path}: belongs to uid {info.st_uid}, not to this user")
    if info.st_mode & 0o077:
        raise SigningKeyError(
            f"{path}: mode {stat.S_IMODE(info.st_mode):o} lets others in; chmod it to "
            f"{'700' if is_dir else '600'}"
        )


@dataclass(frozen=True)
class CheckpointSigning:
    """How the checkpoints of one output.dir are signed and checked: paths only (the secret
    stays in its file, read where it is needed). `trusted` is a tag the user vouched for."""

    key_file: str
    output_dir: str
    trusted: str | None = None

    def key(self) -> bytes:
        context = _KEY_CONTEXT + os.path.realpath(self.output_dir).encode()
        return hmac.new(read_key(Path(self.key_file)), context, hashlib.sha256).digest()

    def sign(self, manifest: bytes) -> str:
        return hmac.new(self.key(), manifest, hashlib.sha256).hexdigest()

    def is_signed(self, manifest: bytes, signature: str) -> bool:
        return hmac.compare_digest(self.sign(manifest), signature.strip())
