"""A real Ray head with the dashboard (the Jobs API lives there), token auth, every port free
and bound to loopback, started by PID and stopped by process group (never `ray stop`).

The head runs in a private mount namespace where `hidden` is an empty tmpfs: files the test
writes there exist for the submitting client only, as on a laptop submitting to a remote
cluster, so uploads and the "path not visible on the cluster" check are exercised for real.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import requests

from tests.integration.conftest import (
    free_port,
    private_temp_dir,
    ray_start,
    stop_group,
    wait_for_port,
)


@contextmanager
def jobs_head(
    logs: Path, hidden: Path, token_auth: bool = True, drop_env: tuple[str, ...] = ()
) -> Iterator[dict[str, str]]:
    """Yields {"url", "address", "temp_dir", and the client env: RAY_AUTH_MODE, RAY_AUTH_TOKEN}."""
    port, dashboard = free_port(), free_port()
    temp_dir = private_temp_dir("ftl-jobs")
    env = {k: v for k, v in os.environ.items() if k not in drop_env}
    # the job's `python` must be this interpreter, as it would be on a provisioned cluster
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
    client = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    if token_auth:
        env |= client
    else:
        env = {k: v for k, v in env.items() if not k.startswith("RAY_AUTH")}
        env["RAY_AUTH_MODE"] = "disabled"
    ports = {
        "--dashboard-agent-listen-port": free_port(),
        "--dashboard-agent-grpc-port": free_port(),
        "--runtime-env-agent-port": free_port(),
        "--metrics-export-port": free_port(),
        "--ray-client-server-port": free_port(),
    }
    start = [
        "--head",
        f"--port={port}",
        "--num-cpus=2",
        "--include-dashboard=true",
        "--dashboard-host=127.0.0.1",
        f"--dashboard-port={dashboard}",
        *(f"{flag}={value}" for flag, value in ports.items()),
        f"--temp-dir={temp_dir}",
    ]
    hidden.mkdir(parents=True, exist_ok=True)
    mount = ("unshare", "-m", "sh", "-c", 'mount -t tmpfs tmpfs "$0" && exec "$@"', str(hidden))
    head = ray_start(start, env, logs / "jobs-head.log", prefix=mount)
    url = f"http://127.0.0.1:{dashboard}"
    try:
        wait_for_port(port, timeout_s=60)
        _wait_for_jobs_api(url, client["RAY_AUTH_TOKEN"], head, logs)
        yield {"url": url, "address": f"127.0.0.1:{port}", "temp_dir": str(temp_dir), **client}
    finally:
        stop_group(head)


def _wait_for_jobs_api(url: str, token: str, head: subprocess.Popen, logs: Path) -> None:
    deadline = time.monotonic() + 90
    headers = {"Authorization": f"Bearer {token}"}
    while time.monotonic() < deadline:
        if head.poll() is not None:
            raise RuntimeError(f"ray head exited; see {logs / 'jobs-head.log'}")
        try:
            if requests.get(f"{url}/api/jobs/", headers=headers, timeout=5).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"Jobs API at {url} did not come up; see {logs}")
