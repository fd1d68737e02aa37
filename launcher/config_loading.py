"""Load a job YAML, apply `--set key=value` overrides, and validate it into a `JobConfig`.

Every problem becomes a `UserError` whose messages name the dotted field as the user wrote it.
"""

from __future__ import annotations

import difflib
import re
import typing
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from launcher.config_bases import leaf_keys, merge_bases
from launcher.errors import UserError
from trainer.config import JobConfig
from trainer.config.peft import peft_error_line, peft_field_path

DOTTED_FIELD = re.compile(r"[a-z_]+\.[a-z_.]+: ")
EXPONENT_FLOAT = re.compile(r"[-+]?\d+(\.\d*)?[eE][-+]?\d+")


def load_job_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> JobConfig:
    """Read a job file with its bases, apply overrides and validate.

    Raises:
        UserError: unreadable or malformed YAML, a bad base, a bad override, or schema violations.
    """
    return load_job_config_explained(path, overrides)[0]


def load_job_config_explained(
    path: str | Path, overrides: list[str] | tuple[str, ...] = ()
) -> tuple[JobConfig, dict[str, str]]:
    """Like `load_job_config`, plus where each set key came from: dotted key -> file or `--set`.

    Raises:
        UserError: as `load_job_config`.
    """
    raw, origins = merge_bases(Path(path), read_yaml_mapping)
    for override in overrides:
        key, value = parse_override(override)
        apply_override(raw, key, value)
        origins |= {dotted: "--set" for dotted in leaf_keys(value, key)}
    return validate_job_dict(raw, source=str(path)), origins


def read_yaml_mapping(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise UserError(f"{path}: config file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: cannot read config ({exc.__class__.__name__}: {exc})") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise UserError(f"{path}:{where}: malformed YAML: {problem}") from None
    if not isinstance(raw, dict):
        raise UserError(
            f"{path}: expected a mapping of sections at the top level, got {type(raw).__name__}"
        )
    return raw


def parse_override(text: str) -> tuple[str, Any]:
    """Split `a.b.c=value`; the value is parsed as a YAML scalar (so `1e-4`, `true`, `null` work)."""
    key, sep, value_text = text.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise UserError(f"--set {text!r}: expected KEY=VALUE with a dotted key, e.g. optim.lr=1e-4")
    try:
        value = yaml.safe_load(value_text) if value_text.strip() else ""
    except yaml.YAMLError:
        raise UserError(f"--set {key}: cannot parse value {value_text!r} as YAML") from None
    if isinstance(value, str) and EXPONENT_FLOAT.fullmatch(value):
        value = float(value)  # YAML 1.1 reads `1e-4` (no dot) as a string; users mean a number
    return key, value


def apply_override(raw: dict[str, Any], dotted_key: str, value: Any) -> None:
    node = raw
    parts = dotted_key.split(".")
    for depth, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            prefix = ".".join(parts[: depth + 1])
            raise UserError(f"--set {dotted_key}: {prefix} is a value, not a section")
        node = child
    node[parts[-1]] = value


def validate_job_dict(raw: dict[str, Any], source: str = "config") -> JobConfig:
    try:
        return JobConfig.model_validate(raw)
    except ValidationError as exc:
        raise UserError(
            *merge_union_errors(format_error(err, raw) for err in exc.errors())
        ) from None


def merge_union_errors(lines: Iterable[str]) -> list[str]:
    """A field typed `int | 'epoch'` fails once per branch; show one line with both reasons."""
    merged: dict[str, list[str]] = {}
    for line in lines:
        field, _, reason = line.partition(": ")
        merged.setdefault(field, []).append(reason)
    for reasons in merged.values():
        # Say the offending input once, at the end.
        reasons[:-1] = [r.split(" (got ")[0] for r in reasons[:-1]]
    return [f"{field}: {' or '.join(reasons)}" for field, reasons in merged.items()]


def format_error(err: Mapping[str, Any], raw: dict[str, Any]) -> str:
    """One line for one pydantic error: `optim.lr: must be > 0 (got -1)`."""
    peft_line = peft_error_line(err)
    if peft_line:
        return peft_line
    loc = peft_field_path([str(part) for part in err["loc"] if not _is_union_branch(part)])
    field = ".".join(loc) or "config"
    kind = err["type"]
    if kind == "extra_forbidden":
        return _unknown_key_message(loc)
    if kind == "missing":
        return f"{field}: required field is missing"
    message = _humanize(err)
    if message.startswith(f"{field}."):  # a section-level rule that already names its field
        return message
    if not loc and DOTTED_FIELD.match(message):  # a cross-section rule that names its field
        return message
    if "input" in err and kind not in ("model_type", "dict_type"):
        return f"{field}: {message} (got {err['input']!r})"
    return f"{field}: {message}"


def _is_union_branch(part: Any) -> bool:
    # pydantic appends the union member tried ('int', "literal['epoch']") to the location.
    return isinstance(part, str) and (
        part in ("int", "float", "str", "list[str]") or "[" in part or "-" in part
    )


def _humanize(err: Mapping[str, Any]) -> str:
    ctx = err.get("ctx") or {}
    simple = {
        "greater_than": "must be > {gt}",
        "greater_than_equal": "must be >= {ge}",
        "less_than": "must be < {lt}",
        "less_than_equal": "must be <= {le}",
        "literal_error": "must be one of {expected}",
    }
    template = simple.get(err["type"])
    if template:
        return template.format(**ctx)
    msg = err["msg"]
    return (
        msg[len("Value error, ") :] if msg.startswith("Value error, ") else msg[0].lower() + msg[1:]
    )


def _unknown_key_message(loc: list[str]) -> str:
    field = ".".join(loc)
    valid = _valid_keys(loc[:-1])
    guess = difflib.get_close_matches(loc[-1], valid, n=1, cutoff=0.6)
    hint = f"; did you mean '{'.'.join([*loc[:-1], guess[0]])}'?" if guess else ""
    return f"{field}: unknown key{hint} (valid keys: {', '.join(valid)})"


def _valid_keys(section_path: list[str]) -> list[str]:
    model: type[BaseModel] = JobConfig
    for part in section_path:
        found = _model_in(model.model_fields[part].annotation)
        if found is None:
            return []
        model = found
    return list(model.model_fields)


def _model_in(annotation: Any) -> type[BaseModel] | None:
    """The section model a field holds, also as one branch of a union (`int | WorkerRange`)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return next(filter(None, map(_model_in, typing.get_args(annotation))), None)


def dump_job_config(job: JobConfig) -> str:
    """The fully resolved config as YAML, every default spelled out (written as config.yaml)."""
    return yaml.safe_dump(job.model_dump(mode="json"), sort_keys=False)
