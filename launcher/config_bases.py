"""Base configs: `base: common.yaml` (or a list) at the top of a job file.

Each base is read (with its own bases, recursively), the bases are deep-merged in the order
listed, and the file's own keys win over all of them; `--set` overrides come last. Mappings
merge key by key; anything else (lists included) is replaced whole, as in Hydra and Axolotl.
A base's path is resolved against the file that names it, so a config tree can be moved or run
from any directory. Where every key came from is kept for `ftlaunch validate --explain`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from launcher.errors import UserError

BASE_KEY = "base"
Reader = Callable[[Path], dict[str, Any]]


def merge_bases(
    path: Path, read: Reader, chain: tuple[Path, ...] = ()
) -> tuple[dict[str, Any], dict[str, str]]:
    """The file at `path` merged over its bases, and the origin of every leaf key.

    Raises:
        UserError: a base that is missing, not a file name, or part of a cycle (naming the file).
    """
    resolved = path.expanduser().resolve()
    if resolved in chain:
        cycle = " -> ".join(str(p) for p in (*chain[chain.index(resolved) :], resolved))
        raise UserError(f"{path}: base configs form a cycle: {cycle}")
    own = read(path)
    merged: dict[str, Any] = {}
    origins: dict[str, str] = {}
    for reference in base_references(own, path):
        base_path = _shown(resolved.parent / Path(reference).expanduser())
        if not base_path.is_file():
            raise UserError(f"{path}: base {reference!r} not found (looked at {base_path})")
        base, base_origins = merge_bases(base_path, read, (*chain, resolved))
        merged, origins = deep_merge(merged, base), origins | base_origins
    own.pop(BASE_KEY, None)
    origins |= {key: str(path) for key in leaf_keys(own)}
    return deep_merge(merged, own), origins


def _shown(path: Path) -> Path:
    """`path` relative to the working directory when it lies below it (for messages)."""
    try:
        return Path(os.path.relpath(path)) if path.is_relative_to(Path.cwd()) else path
    except ValueError:
        return path


def base_references(raw: dict[str, Any], path: Path) -> list[str]:
    """The `base:` entry of one file as a list of relative or absolute paths.

    Raises:
        UserError: `base` is neither a path nor a list of paths.
    """
    value = raw.get(BASE_KEY)
    if value is None:
        return []
    references = [value] if isinstance(value, str) else value
    if not isinstance(references, list) or not all(
        isinstance(r, str) and r.strip() for r in references
    ):
        raise UserError(f"{path}: base must be a file path or a list of file paths")
    return references


def deep_merge(lower: dict[str, Any], upper: dict[str, Any]) -> dict[str, Any]:
    """A new mapping: `upper`'s keys win; mappings present on both sides merge recursively."""
    merged = dict(lower)
    for key, value in upper.items():
        below = merged.get(key)
        if isinstance(value, dict) and isinstance(below, dict):
            merged[key] = deep_merge(below, value)
        else:
            merged[key] = value
    return merged


def leaf_keys(value: Any, prefix: str = "") -> list[str]:
    """Dotted keys of the leaves of a nested mapping (a non-mapping is its own leaf)."""
    if not isinstance(value, dict) or not value:
        return [prefix] if prefix else []
    keys = []
    for key, child in value.items():
        keys += leaf_keys(child, f"{prefix}.{key}" if prefix else str(key))
    return keys


def explain(resolved: dict[str, Any], origins: dict[str, str]) -> list[str]:
    """`key: value  # origin` for every leaf of the resolved config (origin `default` when no
    file or override set it)."""
    lines = []
    for key in leaf_keys(resolved):
        value = resolved
        for part in key.split("."):
            value = value[part]
        origin = next(
            (origins[k] for k in _prefixes(key) if k in origins),
            "default",
        )
        lines.append(f"{key}: {json.dumps(value)}  # {origin}")
    return lines


def _prefixes(key: str) -> list[str]:
    """`a.b.c` -> [`a.b.c`, `a.b`, `a`]: a mapping set whole (`--set cluster.env={...}`)
    is the origin of its leaves."""
    parts = key.split(".")
    return [".".join(parts[:n]) for n in range(len(parts), 0, -1)]
