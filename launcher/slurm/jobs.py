"""`ftlaunch status/logs/stop JOB` for SLURM job ids (all digits). The CLI dispatch between
these and Ray job ids lives in cli.py; these functions only know SLURM.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any, Protocol

from cluster.slurm.jobs import TERMINAL_STATES, SlurmError, cancel, job_log_path, job_state
from launcher.errors import UserError

FOLLOW_POLL_S = 1.0


def is_slurm_job_id(job: str) -> bool:
    return job.isdigit()


def slurm_status(job_id: str) -> str:
    """One line: `<id>: <STATE> (log: <path>)`.

    Raises:
        UserError: unknown id or SLURM tools missing (one line).
    """
    fields = slurm_status_fields(job_id)
    return f"SLURM job {job_id}: {fields['status']} (log: {fields['log']})"


def slurm_status_fields(job_id: str) -> dict[str, str]:
    """{status, log} of a SLURM job.

    Raises:
        UserError: unknown id or SLURM tools missing (one line).
    """
    try:
        return {"status": job_state(job_id), "log": str(job_log_path(job_id))}
    except SlurmError as exc:
        raise UserError(str(exc)) from None


class TextSink(Protocol):
    """Where log text goes: a terminal, or a writer that masks secrets first."""

    def write(self, text: str, /) -> Any: ...

    def flush(self) -> Any: ...


def slurm_logs(job_id: str, follow: bool, out: TextSink = sys.stdout) -> None:
    """Print the job's log; with `follow`, keep printing until the job has ended.

    Raises:
        UserError: unknown id, or the log file cannot be read.
    """
    try:
        path = job_log_path(job_id)
        if not follow:
            out.write(_read(path, 0))
            return
        offset = 0
        while True:
            done = job_state(job_id) in TERMINAL_STATES  # read once more after the end
            chunk = _read(path, offset) if path.exists() else ""
            out.write(chunk)
            out.flush()
            offset += len(chunk.encode())
            if done:
                return
            time.sleep(FOLLOW_POLL_S)
    except SlurmError as exc:
        raise UserError(str(exc)) from None


def _read(path: Path, offset: int) -> str:
    try:
        with path.open("rb") as handle:
            handle.seek(offset)
            return handle.read().decode(errors="replace")
    except OSError as exc:
        raise UserError(f"{path}: cannot read the job's log ({exc.strerror})") from None


def slurm_stop(job_id: str) -> str:
    """scancel the job; Ray on its nodes is torn down by the job script's trap.

    Raises:
        UserError: unknown id, or scancel refused.
    """
    try:
        cancel(job_id)
        return f"SLURM job {job_id}: cancel requested (state now {job_state(job_id)})"
    except SlurmError as exc:
        raise UserError(str(exc)) from None
