"""Check `peft.target_modules` against the model's modules before any worker starts.

The launcher does not import torch, so module names come from the weight names in the
safetensors header (or the sharded index): `bert.encoder.layer.0.attention.self.query.weight`
is module `bert.encoder.layer.0.attention.self.query`. Matching follows peft's rule for a list of
names: a module matches a target if its name equals it or ends with `.` + target.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from launcher.errors import UserError
from trainer.config.peft import PeftConfig

# Task heads are created at load time, so they are in no base checkpoint; peft can target them.
HEAD_MODULES = ("classifier", "score", "lm_head")
HEADER_LIMIT = 100 << 20


def read_weight_shapes(model_dir: Path) -> dict[str, list[int]] | None:
    """Weight name -> shape from the safetensors header(s); None if the model has none."""
    header = read_weight_header(model_dir)
    return None if header is None else {name: e["shape"] for name, e in header.items()}


def read_weight_header(model_dir: Path) -> dict[str, dict[str, Any]] | None:
    """Weight name -> its header entry (`shape`, `dtype`, offsets) from the safetensors file(s)
    of `model_dir`, single or sharded; None if the model has none.

    Raises:
        UserError: a file that is not safetensors, or an unreadable index.
    """
    single = model_dir / "model.safetensors"
    if single.is_file():
        return _header(single)
    index = model_dir / "model.safetensors.index.json"
    if not index.is_file():
        return None
    try:
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    except (OSError, ValueError, KeyError, AttributeError) as exc:
        raise UserError(f"model.path: {index} is not a safetensors index ({exc})") from None
    entries: dict[str, dict[str, Any]] = {}
    for name in files:
        entries |= _header(model_dir / name)
    return entries


def _header(path: Path) -> dict[str, dict[str, Any]]:
    try:
        with path.open("rb") as fh:
            size = int.from_bytes(fh.read(8), "little")
            if not 0 < size < HEADER_LIMIT:
                raise ValueError("header size out of range")
            header = json.loads(fh.read(size))
    except (OSError, ValueError) as exc:
        raise UserError(f"model.path: {path} is not a valid safetensors file ({exc})") from None
    return {name: entry for name, entry in header.items() if name != "__metadata__"}


def module_names(shapes: dict[str, list[int]]) -> list[str]:
    names = {name.rsplit(".", 1)[0] for name in shapes if "." in name}
    return sorted(names | set(HEAD_MODULES))


def matches(module: str, target: str) -> bool:
    return module == target or module.endswith("." + target)


def unmatched_targets(modules: list[str], targets: list[str]) -> list[str]:
    return [t for t in targets if not any(matches(m, t) for m in modules)]


def adaptable_examples(shapes: dict[str, list[int]], limit: int = 8) -> list[str]:
    """Short names of matrix-shaped (linear-like) modules, most frequent first: what to target."""
    counts: dict[str, int] = {}
    for name, shape in shapes.items():
        if name.endswith(".weight") and len(shape) == 2:
            parts = name.split(".")[:-1]
            short = ".".join(parts[-2:]) if parts[-1] == "dense" and len(parts) > 1 else parts[-1]
            counts[short] = counts.get(short, 0) + 1
    return sorted(counts, key=lambda k: (-counts[k], k))[:limit]


def check_target_modules(peft: PeftConfig, model_dir: Path) -> None:
    """Raise UserError naming each target list with a name that matches no module.

    Raises:
        UserError: e.g. `peft.target_modules: 'qkv' matches no module of MODEL (modules here
            include: query, key, value, ...)`.
    """
    fields = peft.target_module_fields()
    shapes = read_weight_shapes(model_dir) if fields else None
    if not shapes:
        return  # nothing to check, or no safetensors: the worker checks with peft itself
    modules = module_names(shapes)
    problems = []
    for field, targets in fields.items():
        missing = unmatched_targets(modules, targets)
        if missing:
            listed = ", ".join(repr(t) for t in missing)
            problems.append(
                f"{field}: {listed} {'matches' if len(missing) == 1 else 'match'} no module of "
                f"{model_dir} (modules here include: {', '.join(adaptable_examples(shapes))})"
            )
    if problems:
        raise UserError(*problems)
