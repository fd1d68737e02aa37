"""`ftlaunch status|logs|stop|list`: Ray jobs through the Jobs API; all-digit ids are SLURM
jobs, handled by launcher/slurm/jobs.py."""

from __future__ import annotations

import json
import os
import sys
from datetime import datetime, timezone
from typing import Any

from cluster.auth.secrets import redact, secret_values
from cluster.auth.token import load_token
from cluster.ray.jobs import JobInfo, JobsClient, api_url, check_access, plain_http_warning
from launcher.commands.submit import Echo, follow_job
from launcher.slurm.jobs import (
    is_slurm_job_id,
    slurm_logs,
    slurm_status,
    slurm_status_fields,
    slurm_stop,
)
from launcher.submit_plan import resolve_address

JSON_STATUS_KEYS = (
    "job",
    "scheduler",
    "status",
    "message",
    "start_time",
    "name",
    "config",
    "output_dir",
    "driver_exit_code",
    "log",
)


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


def show_status(job_id: str, address: str | None, echo: Echo, as_json: bool = False) -> int:
    if is_slurm_job_id(job_id):
        if as_json:
            echo(to_json(status_document(job_id, "slurm") | slurm_status_fields(job_id)))
        else:
            echo(slurm_status(job_id))
        return 0
    info = ray_client(address).info(job_id)
    message = redact(info.message, secret_values(os.environ)) if info.message else ""
    if as_json:
        fields = job_fields(info) | {"message": message or None}
        echo(to_json(status_document(job_id, "ray") | fields))
        return 0
    echo(info.status)
    if message:
        echo(message)
    return 0


def status_document(job_id: str, scheduler: str) -> dict[str, Any]:
    """Every key `status --json` prints, for both schedulers (null where one has no value)."""
    return dict.fromkeys(JSON_STATUS_KEYS) | {"job": job_id, "scheduler": scheduler}


def job_fields(info: JobInfo) -> dict[str, Any]:
    """A Ray job's stable JSON fields (times as ISO 8601 UTC)."""
    started = (
        datetime.fromtimestamp(info.start_time / 1000, tz=timezone.utc).isoformat()
        if info.start_time
        else None
    )
    meta = info.metadata
    return {
        "job": info.submission_id,
        "status": info.status,
        "start_time": started,
        "name": meta.get("name"),
        "config": meta.get("config"),
        "output_dir": meta.get("output_dir"),
        "driver_exit_code": info.driver_exit_code,
    }


def to_json(document: dict[str, Any]) -> str:
    return json.dumps(document, indent=2, sort_keys=True)


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


def list_jobs(address: str | None, echo: Echo, as_json: bool = False) -> int:
    jobs = sorted(ray_client(address).list_tagged(), key=lambda j: j.start_time or 0)
    if as_json:
        echo(to_json({"jobs": [job_fields(job) for job in jobs]}))
        return 0
    for job in jobs:
        started = (
            datetime.fromtimestamp(job.start_time / 1000).strftime("%Y-%m-%d %H:%M:%S")
            if job.start_time
            else "-"
        )
        meta = job.metadata
        echo(f"{job.submission_id}\t{job.status}\t{started}\t{meta.get('name', '')}")
    return 0
