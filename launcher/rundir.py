"""The run directory on the head: a private staging area while running, committed on success.

Nothing in `output.dir` is touched until training has succeeded, so a failed or interrupted run
leaves earlier results intact; each committed entry replaces its predecessor with renames.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

COMMITTED_ENTRIES = (
    "config.yaml",
    "metrics.jsonl",
    "summary.json",
    "model",
    "predictions_test.jsonl",
)


def new_run_id(name: str) -> str:
    return f"{name}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"


def create_staging(output_dir: Path, run_id: str) -> Path:
    staging = output_dir / f".run-{run_id}"
    staging.mkdir(parents=True, exist_ok=False)
    return staging


def commit_run(staging: Path, output_dir: Path) -> None:
    """Move each finished entry from staging into `output_dir`, then drop the staging area."""
    for name in COMMITTED_ENTRIES:
        source = staging / name
        if source.exists():
            replace_entry(source, output_dir / name)
    shutil.rmtree(staging, ignore_errors=True)


def replace_entry(source: Path, target: Path) -> None:
    # A rename is atomic; a directory cannot be renamed over a non-empty one, so the old entry is
    # first renamed aside and deleted only once the new one is in place.
    aside = target.with_name(f".old-{target.name}-{os.getpid()}")
    if target.exists():
        os.rename(target, aside)
    os.rename(source, target)
    if aside.is_dir():
        shutil.rmtree(aside)
    elif aside.exists():
        aside.unlink()
