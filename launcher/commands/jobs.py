"""`ftlaunch status|logs|stop|list`: Ray jobs through the Jobs API; all-digit ids are SLURM
jobs, handled by launcher/slurm/jobs.py."""

from __future__ import annotations

import os
import sys
from datetime import datetime

from cluster.auth.secrets import redact, secret_values
from cluster.auth.token import load_token
from cluster.ray.jobs import JobsClient, api_url, check_access, plain_http_warning
from launcher.commands.submit import Echo, follow_job
from launcher.slurm.jobs import is_slurm_job_id, slurm_logs, slurm_status, slurm_stop
from launcher.submit_plan import resolve_address


def ray_client(address: str | None) -> JobsClient:
    """A Jobs API client for reading and stopping jobs; an open cluster is allowed here (reading
    is harmless, `submit` refuses it) but never gets our token."""
    target, source = resolve_address(address, None, os.environ)
    url = api_url(target)
    warning = plain_http_warning(url)
    if warning:
        print(warning, file=sys.stderr)
    token = check_access(url, load_token(), source, allow_insecure=True)
    return JobsClient(url, token, source)


def show_status(job_id: str, address: str | None, echo: Echo) -> int:
    if is_slurm_job_id(job_id):
        echo(slurm_status(job_id))
        return 0
    info = ray_client(address).info(job_id)
    echo(info.status)
    if info.message:
        echo(redact(info.message, secret_values(os.environ)))
    return 0


def show_logs(job_id: str, address: str | None, follow: bool, echo: Echo, note: Echo) -> int:
    hidden = secret_values(os.environ)
    if is_slurm_job_id(job_id):
        slurm_logs(job_id, follow, _RedactingWriter(echo, hidden))
        return 0
    client = ray_client(address)
    if not follow:
        echo(redact(client.logs(job_id), hidden).rstrip("\n"))
        return 0
    return follow_job(client, job_id, note, hidden)


class _RedactingWriter:
    """What slurm_logs writes to: each chunk, secrets masked, goes to `echo`."""

    def __init__(self, echo: Echo, hidden: list[str]) -> None:
        self._echo, self._hidden = echo, hidden

    def write(self, text: str) -> None:
        if text:
            self._echo(redact(text, self._hidden).rstrip("\n"))

    def flush(self) -> None:
        return None


def stop_job(job_id: str, address: str | None, echo: Echo) -> int:
    if is_slurm_job_id(job_id):
        echo(slurm_stop(job_id))
        return 0
    stopped = ray_client(address).stop(job_id)
    echo(f"{job_id}: stop requested" if stopped else f"{job_id}: already finished")
    return 0


def list_jobs(address: str | None, echo: Echo) -> int:
    jobs = ray_client(address).list_tagged()
    for job in sorted(jobs, key=lambda j: j.start_time or 0):
        started = (
            datetime.fromtimestamp(job.start_time / 1000).strftime("%Y-%m-%d %H:%M:%S")
            if job.start_time
            else "-"
        )
        meta = job.metadata
        echo(f"{job.submission_id}\t{job.status}\t{started}\t{meta.get('name', '')}")
    return 0
