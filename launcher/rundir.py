"""The run directory on the head: a private staging area while running, committed on success.

Nothing in `output.dir` is touched until training has succeeded, so a failed or interrupted run
leaves earlier results intact; each committed entry replaces its predecessor with renames. The
names are in trainer/formats/rundir.py.

ftlaunch replaces entries of `output.dir` (model/, tensorboard/, ...), so it writes only into a
directory that is its own: a new or empty one (then marked with `.ftlaunch`), or one that
already carries that marker; and never into one that holds, or lies inside, the run's inputs.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

from launcher.errors import UserError
from trainer.formats.durable import replace_atomically
from trainer.formats.rundir import COMMITTED_ENTRIES, OUTPUT_MARKER, staging_name

MARKER_TEXT = (
    "This directory belongs to ftlaunch runs: `ftlaunch run` replaces model/, tensorboard/,\n"
    "metrics.jsonl, summary.json, ... here, and keeps checkpoints/. Delete this file only\n"
    "together with the directory.\n"
)


def new_run_id(name: str) -> str:
    return f"{name}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"


def check_apart(output_dir: Path, inputs: dict[str, Path]) -> None:
    """Refuse an output.dir that is, contains or lies inside one of the run's inputs
    (field -> resolved path): finishing a run replaces entries of output.dir.

    Raises:
        UserError: one line per input that overlaps.
    """
    problems = []
    for field, path in inputs.items():
        if output_dir == path or output_dir in path.parents:
            problems.append(f"output.dir: {output_dir} contains {field} ({path})")
        elif path in output_dir.parents:
            problems.append(f"output.dir: {output_dir} lies inside {field} ({path})")
    advice = "; results replace entries of output.dir: choose a directory apart from the inputs"
    if problems:
        raise UserError(*(problem + advice for problem in problems))


def check_output_dir(output_dir: Path) -> None:
    """Refuse an output.dir ftlaunch may not write into (reads only: nothing is created).

    Raises:
        UserError: a file, a dangling link, or a non-empty directory without ftlaunch's marker.
    """
    marker = output_dir / OUTPUT_MARKER
    if output_dir.is_symlink() and not output_dir.exists():
        raise UserError(f"output.dir: {output_dir} is a dangling symbolic link")
    if output_dir.exists() and not output_dir.is_dir():
        raise UserError(f"output.dir: {output_dir} exists and is not a directory")
    if not output_dir.exists() or (marker.is_file() and not marker.is_symlink()):
        return
    if any(output_dir.iterdir()):
        raise UserError(
            f"output.dir: {output_dir} is not empty and was not created by ftlaunch (no "
            f"{OUTPUT_MARKER} marker); ftlaunch replaces entries of output.dir, so it only "
            "writes into a new or empty directory, or one an earlier run created"
        )


def claim_output_dir(output_dir: Path) -> None:
    """Create `output_dir` marked as ftlaunch's, or mark an empty one (after the checks above).

    Raises:
        UserError: as `check_output_dir`.
    """
    check_output_dir(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    marker = output_dir / OUTPUT_MARKER
    if not marker.is_file():
        marker.write_text(MARKER_TEXT)


def create_staging(output_dir: Path, run_id: str) -> Path:
    staging = output_dir / staging_name(run_id)
    staging.mkdir(parents=True, exist_ok=False)
    return staging


def commit_run(staging: Path, output_dir: Path) -> None:
    """Move each finished entry from staging into `output_dir`, then drop the staging area."""
    for name in COMMITTED_ENTRIES:
        source = staging / name
        if source.exists():
            replace_atomically(source, output_dir / name)
    shutil.rmtree(staging, ignore_errors=True)
