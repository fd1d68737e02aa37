"""The run directory on the head: a private staging area while running, committed on success.

Nothing in `output.dir` is touched until training has succeeded, so a failed or interrupted run
leaves earlier results intact; each committed entry replaces its predecessor with renames. The
names are in trainer/formats/rundir.py.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

from trainer.formats.durable import replace_atomically
from trainer.formats.rundir import COMMITTED_ENTRIES, staging_name


def new_run_id(name: str) -> str:
    return f"{name}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"


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
