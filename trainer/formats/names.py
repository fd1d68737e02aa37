"""Names that arrive from another process or another run (a checkpoint tag, a file a worker
sends, an entry of a manifest) and the paths built from them.

A name is a relative POSIX path of plain components: never absolute, never `..`, `.` or empty
components, no NUL. A path built from one is confined below its root: no component below the
root may be a symbolic link, so nothing is followed out of it. Checkpoint tags are `step-<n>`.
Torch-free: the head's collector, the workers and the launcher all check names here.
"""

from __future__ import annotations

import re
from pathlib import Path

_STEP_TAG = re.compile(r"step-(0|[1-9][0-9]{0,17})")


class UnsafeNameError(ValueError):
    """A name from another process that would reach outside its root."""


def check_tag(tag: object) -> str:
    """`tag` if it is a checkpoint tag (`step-<n>`).

    Raises:
        UnsafeNameError: anything else (`../x`, `step-1/..`, an absolute path, a non-string).
    """
    if not isinstance(tag, str) or not _STEP_TAG.fullmatch(tag):
        raise UnsafeNameError(f"checkpoint tag {tag!r}: must be step-<n>")
    return tag


def check_name(name: object) -> str:
    """`name` if it is a relative path of plain components.

    Raises:
        UnsafeNameError: an absolute path, a `..`, `.` or empty component, or a NUL byte.
    """
    if not isinstance(name, str) or not name or "\0" in name or name.startswith("/"):
        raise UnsafeNameError(f"file name {name!r}: must be a relative path")
    if any(part in ("", ".", "..") for part in name.split("/")):
        raise UnsafeNameError(f"file name {name!r}: must not contain '..', '.' or empty parts")
    return name


def confined(root: Path, name: str) -> Path:
    """`root / name` for a checked `name`, refused if any existing component below `root` is a
    symbolic link (it could lead anywhere).

    Raises:
        UnsafeNameError: a bad name, or a symbolic link on the way.
    """
    path = root
    for part in check_name(name).split("/"):
        path = path / part
        if path.is_symlink():
            raise UnsafeNameError(f"file name {name!r}: {path} is a symbolic link")
    return path
