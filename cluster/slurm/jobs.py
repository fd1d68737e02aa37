"""SLURM jobs by id: submit, state, log file, cancel, through the SLURM client tools.

There may be no accounting database (no `sacct`): state comes from `squeue`, falling back to
`scontrol show job`, which know a finished job for MinJobAge (300 s by default). The log path of
an older job comes from the record `submit` leaves in `~/.cache/ftlaunch/slurm-jobs/`.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

TERMINAL_STATES = {
    "BOOT_FAIL",
    "CANCELLED",
    "COMPLETED",
    "DEADLINE",
    "FAILED",
    "NODE_FAIL",
    "OUT_OF_MEMORY",
    "PREEMPTED",
    "TIMEOUT",
}
TIMEOUT_S = 30


class SlurmError(Exception):
    """A SLURM client tool is missing, refused the request, or does not know the job (one line)."""


def records_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "ftlaunch" / "slurm-jobs"


def require_tool(name: str) -> str:
    """The path of a SLURM client tool.

    Raises:
        SlurmError: it is not on PATH.
    """
    path = shutil.which(name)
    if path is None:
        raise SlurmError(f"{name}: not found on PATH; run this on a SLURM login node")
    return path


def _run(name: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [require_tool(name), *args], capture_output=True, text=True, timeout=TIMEOUT_S, check=False
    )


def _checked_id(job_id: str) -> str:
    if not str(job_id).isdigit():
        raise SlurmError(f"job {job_id!r}: not a SLURM job id (digits only)")
    return str(job_id)


def _first_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[0] if lines else "no output"


def submit(script: Path) -> str:
    """`sbatch` the script; returns the job id.

    Raises:
        SlurmError: sbatch is missing or refused the script (its first error line).
    """
    # sbatch records the submitting umask (SLURM_UMASK, unless already set) and slurmstepd
    # creates the job's log with it: 077 both ways, so the log is the user's alone.
    out = subprocess.run(
        [require_tool("sbatch"), "--parsable", str(script)],
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        check=False,
        env=dict(os.environ, SLURM_UMASK="0077"),
        preexec_fn=lambda: os.umask(0o077),
    )
    if out.returncode != 0:
        raise SlurmError(f"sbatch refused {script}: {_first_line(out.stderr)}")
    job_id = out.stdout.strip().split(";")[0]
    if not job_id.isdigit():
        raise SlurmError(f"sbatch printed no job id for {script}: {_first_line(out.stdout)}")
    return job_id


def record_submission(job_id: str, log: Path, script: Path, output_dir: Path) -> Path:
    """Remember where job `job_id` logs, for when SLURM has forgotten it."""
    directory = records_dir()
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{job_id}.json"
    fields = {"log": str(log), "script": str(script), "output_dir": str(output_dir)}
    path.write_text(json.dumps(fields) + "\n")
    return path


def _scontrol_fields(job_id: str) -> dict[str, str] | None:
    out = _run("scontrol", "show", "job", "-o", job_id)
    if out.returncode != 0 or not out.stdout.strip():
        return None
    return dict(re.findall(r"(\w+)=(\S*)", out.stdout.splitlines()[0]))


def job_state(job_id: str) -> str:
    """SLURM's state of the job, e.g. PENDING, RUNNING, COMPLETED, CANCELLED, FAILED, TIMEOUT.

    Raises:
        SlurmError: not an id, the tools are missing, or SLURM does not know the job.
    """
    job_id = _checked_id(job_id)
    out = _run("squeue", "--noheader", "--states=all", f"--jobs={job_id}", "--format=%T")
    state = (
        out.stdout.strip().splitlines()[0].strip()
        if out.returncode == 0 and out.stdout.strip()
        else ""
    )
    if state:
        return state
    fields = _scontrol_fields(job_id)
    if fields and fields.get("JobState"):
        return fields["JobState"]
    raise SlurmError(
        f"job {job_id}: no such SLURM job (or finished longer ago than SLURM keeps jobs)"
    )


def job_log_path(job_id: str) -> Path:
    """The job's output file (stdout and stderr of the batch script).

    Raises:
        SlurmError: SLURM and ftlaunch's submission records both do not know the job.
    """
    job_id = _checked_id(job_id)
    fields = _scontrol_fields(job_id)
    if fields and fields.get("StdOut"):
        return Path(fields["StdOut"])
    record = records_dir() / f"{job_id}.json"
    if record.is_file():
        return Path(json.loads(record.read_text())["log"])
    raise SlurmError(f"job {job_id}: no such SLURM job, and ftlaunch did not submit it")


def cancel(job_id: str) -> None:
    """`scancel` the job (SIGTERM to its steps, then SIGKILL after SLURM's KillWait).

    Raises:
        SlurmError: unknown job, or scancel refused.
    """
    state = job_state(job_id)  # scancel exits 0 for an unknown id on some versions
    if state in TERMINAL_STATES:
        return
    out = _run("scancel", job_id)
    if out.returncode != 0:
        raise SlurmError(f"job {job_id}: scancel failed: {_first_line(out.stderr)}")
