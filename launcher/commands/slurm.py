"""`ftlaunch slurm`: validate the job, render the sbatch script, keep it for audit, submit it.

Everything for one submission lands in `output.dir/slurm/<name>-<time>-<pid>/`: the resolved
config the job will run, the rendered `job.sbatch`, and the job's log `slurm-<id>.out`.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from rich.console import Console

from cluster.slurm.jobs import SlurmError, record_submission, require_tool, submit
from cluster.slurm.script import LOG_NAME, render_sbatch
from launcher.config_loading import dump_job_config, load_job_config
from launcher.errors import UserError
from launcher.rundir import claim_output_dir
from launcher.slurm.options import SlurmOptions, build_request

SUBMISSIONS_DIR = "slurm"


def submit_from_file(
    config_path: Path,
    overrides: list[str],
    options: SlurmOptions,
    dry_run: bool,
    console: Console,
) -> str | None:
    """Submit the job (or print its script with `dry_run`); returns the SLURM job id.

    Raises:
        UserError: bad config or options, no `sbatch`, sbatch refusing the script, an
            output.dir that is not ftlaunch's, or one holding checkpoints without --resume.
    """
    job = load_job_config(config_path, overrides)
    workdir = Path.cwd()
    stamp = f"{job.name}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    output_dir = Path(job.output.dir).expanduser()
    submission_dir = (workdir / output_dir).resolve() / SUBMISSIONS_DIR / stamp
    resolved_config = submission_dir / "config.yaml"
    request = build_request(options, job, resolved_config, submission_dir, workdir)
    script = render_sbatch(request)
    if dry_run:
        console.print(script, markup=False, highlight=False, end="")
        return None
    try:
        require_tool("sbatch")
    except SlurmError as exc:
        raise UserError(str(exc)) from None
    _check_no_foreign_checkpoints(request.output_dir, options.resume)
    claim_output_dir(request.output_dir)  # ftlaunch's own, or refused: the job writes there
    submission_dir.mkdir(mode=0o700, parents=True)
    resolved_config.write_text(dump_job_config(job))
    script_path = submission_dir / "job.sbatch"
    script_path.write_text(script)
    try:
        job_id = submit(script_path)
    except SlurmError as exc:
        raise UserError(str(exc)) from None
    log = submission_dir / LOG_NAME.replace("%j", job_id)
    (submission_dir / "job_id").write_text(job_id + "\n")
    record_submission(job_id, log, script_path, request.output_dir)
    console.print(f"submitted SLURM job {job_id} ({options.nodes} nodes); script: {script_path}")
    console.print(f"follow it: tail -f {log}   (state: squeue -j {job_id}; stop: scancel {job_id})")
    return job_id


def _check_no_foreign_checkpoints(output_dir: Path, resume: bool) -> None:
    """The job would refuse to start over an earlier run's checkpoints; say so before queueing."""
    if resume:
        return
    found = sorted((output_dir / "checkpoints").glob("step-*/COMPLETE"))
    if found:
        raise UserError(
            f"output.dir: {output_dir / 'checkpoints'} holds checkpoints of an earlier run "
            f"({found[-1].parent.name}); pass --resume to continue it, or choose another output.dir"
        )
