"""What `ftlaunch predict` and `ftlaunch generate` decide before any torch is loaded: which model
directory a RUN_DIR or MODEL_DIR means, what task it was trained for, the run's data settings,
and the child process (`python -m trainer.infer.*`) that does the work."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from launcher.errors import UserError
from trainer.formats.rundir import CONFIG_FILE, MODEL_DIR

ADAPTER_CONFIG = "adapter_config.json"


@dataclass(frozen=True)
class TrainedModel:
    directory: Path
    task: str  # sequence-classification | causal-lm
    data: dict[str, Any]  # the run's data section (text_column, max_length, ...); {} if unknown


def find_model(path: Path) -> TrainedModel:
    """RUN_DIR (a run's output.dir, with model/ and config.yaml) or a model directory.

    Raises:
        UserError: no model there.
    """
    if not path.is_dir():
        raise UserError(f"RUN_DIR: {path} is not a directory")
    directory = path / MODEL_DIR if _is_model_dir(path / MODEL_DIR) else path
    if not _is_model_dir(directory):
        raise UserError(
            f"RUN_DIR: {path} holds no model (neither {MODEL_DIR}/ of a finished run nor "
            f"config.json / {ADAPTER_CONFIG})"
        )
    job = _run_config(path) or _run_config(directory.parent) or {}
    task = (job.get("model") or {}).get("task") or _task_from_architecture(directory)
    return TrainedModel(directory.resolve(), task, job.get("data") or {})


def _is_model_dir(directory: Path) -> bool:
    return (directory / "config.json").is_file() or (directory / ADAPTER_CONFIG).is_file()


def _run_config(directory: Path) -> dict[str, Any] | None:
    config = directory / CONFIG_FILE
    if not config.is_file():
        return None
    try:
        loaded = yaml.safe_load(config.read_text())
    except yaml.YAMLError:
        return None
    return loaded if isinstance(loaded, dict) else None


def _task_from_architecture(directory: Path) -> str:
    """Without the run's config.yaml: what the saved architecture says."""
    config_file = directory / "config.json"
    if not config_file.is_file():
        config_file = directory / ADAPTER_CONFIG
    config = json.loads(config_file.read_text())
    names = " ".join(config.get("architectures") or []) + " " + str(config.get("task_type", ""))
    return "causal-lm" if "CausalLM" in names or "CAUSAL_LM" in names else "sequence-classification"


def check_task(model: TrainedModel, wanted: str, other_verb: str) -> None:
    if model.task != wanted:
        raise UserError(
            f"RUN_DIR: {model.directory} is a {model.task} model; use ftlaunch {other_verb}"
        )


def check_input(path: Path) -> None:
    if not path.is_file():
        raise UserError(f"--input: {path} is not a file")


def check_output(path: Path | None) -> None:
    if path is not None and path.is_dir():
        raise UserError(f"--output: {path} is a directory; name a file")


def check_positive(value: int, option: str) -> None:
    if value < 1:
        raise UserError(f"{option}: must be >= 1 (got {value})")


def run_child(module: str, args: list[str]) -> int:
    """Run `python -m module args` with this terminal (its progress bar on stderr, its output
    on stdout); returns its exit code (2 with one `error: ` line for a bad input)."""
    return subprocess.run([sys.executable, "-m", module, *args], check=False).returncode
