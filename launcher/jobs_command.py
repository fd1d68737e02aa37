"""`ftlaunch status|logs|stop|list`: Ray jobs through the Jobs API; all-digit ids are SLURM
jobs, handled by cluster/slurm_jobs.py (the SLURM backend's module)."""

from __future__ import annotations

import os
import time
from datetime import datetime
from pathlib import Path
from types import ModuleType

from cluster.ray_jobs import JobsClient, api_url, check_access
from cluster.ray_token import load_token
from cluster.secret_env import redact, secret_values
from launcher.errors import UserError
from launcher.submit import Echo, follow_job
from launcher.submit_plan import resolve_address

SLURM_ACTIVE = {"PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "SUSPENDED", "REQUEUED"}


def is_slurm_id(job_id: str) -> bool:
    return job_id.isdigit()


def slurm_jobs(job_id: str) -> ModuleType:
    try:
        import cluster.slurm_jobs as module
    except ModuleNotFoundError as exc:
        if exc.name != "cluster.slurm_jobs":
            raise
        raise UserError(
            f"JOB {job_id}: an all-digit id is a SLURM job, and this ftlaunch has no SLURM "
            "support (cluster/slurm_jobs.py is missing)"
        ) from None
    return module


def ray_client(address: str | None) -> JobsClient:
    target, source = resolve_address(address, None, os.environ)
    url, token = api_url(target), load_token()
    check_access(url, token, source, allow_insecure=True)  # reading is harmless; submit refuses
    return JobsClient(url, token, source)


def show_status(job_id: str, address: str | None, echo: Echo) -> int:
    if is_slurm_id(job_id):
        echo(slurm_jobs(job_id).job_state(job_id))
        return 0
    info = ray_client(address).info(job_id)
    echo(str(info.status.value))
    if info.message:
        echo(redact(info.message, secret_values(os.environ)))
    return 0


def show_logs(job_id: str, address: str | None, follow: bool, echo: Echo, note: Echo) -> int:
    hidden = secret_values(os.environ)
    if is_slurm_id(job_id):
        return _slurm_logs(job_id, follow, lambda text: echo(redact(text, hidden)))
    client = ray_client(address)
    if not follow:
        echo(redact(client.logs(job_id), hidden).rstrip("\n"))
        return 0
    return follow_job(client, job_id, note, hidden)


def _slurm_logs(job_id: str, follow: bool, echo: Echo) -> int:
    slurm = slurm_jobs(job_id)
    path = Path(slurm.job_log_path(job_id))
    offset = 0
    while True:
        if path.is_file():
            with path.open() as handle:
                handle.seek(offset)
                text = handle.read()
                offset = handle.tell()
            if text:
                echo(text.rstrip("\n"))
        if not follow:
            return 0
        state = slurm.job_state(job_id)
        if state not in SLURM_ACTIVE:
            return 0 if state == "COMPLETED" else 1
        time.sleep(1)


def stop_job(job_id: str, address: str | None, echo: Echo) -> int:
    if is_slurm_id(job_id):
        slurm_jobs(job_id).cancel(job_id)
        echo(f"{job_id}: cancel requested")
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
        meta = job.metadata or {}
        echo(f"{job.submission_id}\t{job.status.value}\t{started}\t{meta.get('name', '')}")
    return 0
