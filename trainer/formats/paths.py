"""Paths built from names that came from another process: confined below their root."""

from __future__ import annotations

from pathlib import Path


def confined(root: Path, name: str) -> Path:
    """`root / name`, refused if it resolves outside `root` (a name came from another process).

    Raises:
        ValueError: the name escapes the root.
    """
    target = (root / name).resolve()
    if root.resolve() not in target.parents:
        raise ValueError(f"artifact name {name!r} escapes {root}")
    return target
