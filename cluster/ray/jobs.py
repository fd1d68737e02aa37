"""A thin shell around Ray's Jobs API (the dashboard's REST endpoints, and Ray's
`JobSubmissionClient` for uploads) that turns every failure into a one-line `ClusterError`
naming the address, the token problem or the job id."""

from __future__ import annotations

import ipaddress
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

import requests

from cluster.errors import ClusterError

FTLAUNCH_TAG = "ftlaunch"  # metadata key that marks the jobs `ftlaunch list` shows
PROBE_TIMEOUT_S = 10
REQUEST_TIMEOUT_S = 30
TAIL_POLL_S = 1.0
AGENT_WAIT_S = 60  # how long a submit waits for a just-started cluster's job agent
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")


class JobNotFound(ClusterError):
    """No job with this id on the cluster."""


def api_url(address: str) -> str:
    """`HEAD:8265` -> `http://HEAD:8265`; an explicit http(s) URL is kept (without trailing /)."""
    address = address.strip().rstrip("/")
    return address if "://" in address else f"http://{address}"


@dataclass(frozen=True)
class Probe:
    """What the Jobs API said to a request without a token, and to one with ours."""

    open_without_token: bool
    token_accepted: bool | None  # None: we had no token to try


def probe(url: str, token: str | None, source: str) -> Probe:
    """Ask /api/version without credentials, then with the token.

    Raises:
        ClusterError: nothing answers at `url`, or it is not a Ray Jobs API.
    """
    anonymous = _get(url, {}, source)
    if anonymous.status_code == 200:
        return Probe(open_without_token=True, token_accepted=None)
    if anonymous.status_code not in (401, 403):
        raise ClusterError(
            f"{source}: {url} is not a Ray Jobs API (HTTP {anonymous.status_code} on /api/version)"
        )
    if token is None:
        return Probe(open_without_token=False, token_accepted=None)
    authed = _get(url, auth_headers(token), source)
    return Probe(open_without_token=False, token_accepted=authed.status_code == 200)


def _get(url: str, headers: dict[str, str], source: str) -> requests.Response:
    try:
        return requests.get(f"{url}/api/version", headers=headers, timeout=PROBE_TIMEOUT_S)
    except requests.RequestException as exc:
        reason = type(exc).__name__.replace("Error", " error").strip().lower()
        raise ClusterError(
            f"{source}: cannot reach the Ray Jobs API at {url} ({reason}; it is served on the "
            "dashboard port, 8265 by default)"
        ) from None


def auth_headers(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


def plain_http_warning(url: str) -> str | None:
    """A warning when `url` would carry the token unencrypted beyond this machine (pure)."""
    parsed = urlparse(url)
    host = parsed.hostname or ""
    if parsed.scheme != "http" or host == "localhost":
        return None
    try:
        if ipaddress.ip_address(host).is_loopback:
            return None
    except ValueError:
        pass  # a host name: not known to be this machine
    return (
        f"warning: {url} is plain http to another host: the Ray auth token and the job travel "
        "unencrypted; prefer https:// (a TLS proxy in front of the dashboard) or an SSH tunnel"
    )


def check_access(url: str, token: str | None, source: str, allow_insecure: bool) -> str | None:
    """Refuse a cluster we cannot authenticate to, and (unless `allow_insecure`) one that
    accepts requests from anybody. Returns the token to present from now on: None for a
    cluster that answered without asking for one (it never gets ours).

    Raises:
        ClusterError: unreachable, open to unauthenticated requests, or token missing/wrong.
    """
    result = probe(url, token, source)
    if result.open_without_token and not allow_insecure:
        raise ClusterError(
            f"{source}: {url} accepts requests without a token (Ray token auth is off); "
            "refusing to send a job there: start the cluster with RAY_AUTH_MODE=token, "
            "or pass --insecure"
        )
    if result.open_without_token:
        return None
    if token is None:
        raise ClusterError(
            f"{source}: {url} requires a Ray auth token and none was found "
            "(set RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token)"
        )
    if not result.token_accepted:
        raise ClusterError(f"{source}: {url} rejected our Ray auth token (wrong token)")
    return token


@contextmanager
def _address_env_cleared() -> Iterator[None]:
    # Ray's client lets RAY_ADDRESS override the address it is given; ftlaunch's order is
    # --address, cluster.address, RAY_ADDRESS, already applied by the caller.
    saved = {
        k: os.environ.pop(k) for k in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS") if k in os.environ
    }
    try:
        yield
    finally:
        os.environ.update(saved)


@dataclass(frozen=True)
class JobInfo:
    """What the Jobs API says about one job (the fields ftlaunch shows)."""

    submission_id: str
    status: str
    message: str
    start_time: int | None  # ms since the epoch
    metadata: dict[str, str]
    driver_exit_code: int | None

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> JobInfo:
        return cls(
            submission_id=str(raw.get("submission_id") or raw.get("job_id") or ""),
            status=str(raw.get("status", "")),
            message=str(raw.get("message") or ""),
            start_time=raw.get("start_time"),
            metadata=dict(raw.get("metadata") or {}),
            driver_exit_code=raw.get("driver_exit_code"),
        )


class JobsClient:
    """ftlaunch's verbs on one cluster's Jobs API. Reading and stopping are plain HTTP (so
    `ftlaunch status/logs/list/stop` never import Ray); submitting goes through Ray's SDK, which
    packages and uploads the working directory."""

    def __init__(self, url: str, token: str | None, source: str) -> None:
        self.url = url
        self._headers = auth_headers(token)
        self._source = source

    def submit(
        self,
        entrypoint: str,
        submission_id: str,
        runtime_env: dict[str, Any],
        metadata: dict[str, str],
    ) -> str:
        client = self._sdk_client()
        # A cluster that has just started answers "No available agent" until its job agent is
        # up (seconds); that is worth waiting for, anything else is an error at once.
        deadline = time.monotonic() + AGENT_WAIT_S
        while True:
            try:
                return client.submit_job(
                    entrypoint=entrypoint,
                    submission_id=submission_id,
                    runtime_env=runtime_env,
                    metadata=metadata,
                )
            except Exception as exc:
                if "No available agent" in str(exc) and time.monotonic() < deadline:
                    time.sleep(1.0)
                    continue
                raise ClusterError(f"submit to {self.url} failed: {_first_line(exc)}") from None

    def info(self, job_id: str) -> JobInfo:
        return JobInfo.from_json(self._request("GET", f"/api/jobs/{job_id}", job_id))

    def status(self, job_id: str) -> str:
        return self.info(job_id).status

    def logs(self, job_id: str) -> str:
        return str(self._request("GET", f"/api/jobs/{job_id}/logs", job_id).get("logs", ""))

    def stop(self, job_id: str) -> bool:
        return bool(self._request("POST", f"/api/jobs/{job_id}/stop", job_id).get("stopped"))

    def delete(self, job_id: str) -> None:
        self._request("DELETE", f"/api/jobs/{job_id}", job_id)

    def list_tagged(self) -> list[JobInfo]:
        jobs = [JobInfo.from_json(raw) for raw in self._request("GET", "/api/jobs/", "")]
        return [j for j in jobs if j.metadata.get(FTLAUNCH_TAG)]

    def tail(self, job_id: str, on_chunk: Callable[[str], None]) -> None:
        """Stream the job's logs until it ends (polling: each new part once, in order)."""
        shown = 0
        while True:
            done = self.status(job_id) in TERMINAL  # read the logs once more after the end
            text = self.logs(job_id)
            if len(text) > shown:
                on_chunk(text[shown:])
                shown = len(text)
            if done:
                return
            time.sleep(TAIL_POLL_S)

    def _request(self, method: str, path: str, job_id: str) -> Any:
        """One Jobs API call; every failure is a one-line ClusterError (JobNotFound for 404)."""
        try:
            response = requests.request(
                method, f"{self.url}{path}", headers=self._headers, timeout=REQUEST_TIMEOUT_S
            )
        except requests.RequestException as exc:
            raise ClusterError(f"{self.url}: {type(exc).__name__}: {_first_line(exc)}") from None
        if response.status_code == 404 and job_id:
            raise JobNotFound(f"JOB {job_id}: no such job on {self.url}")
        if response.status_code != 200:
            reason = _first_line(Exception(response.text)) if response.text else response.reason
            raise ClusterError(f"{self.url}: HTTP {response.status_code} on {path}: {reason}")
        return response.json()

    def _sdk_client(self) -> Any:
        from ray.job_submission import JobSubmissionClient

        # Without a token to present (an open cluster), the header is None rather than absent:
        # Ray's SDK adds the local token by itself under RAY_AUTH_MODE=token unless the caller set
        # an Authorization header, and `requests` sends no header whose value is None.
        headers: dict[str, str | None] = {"Authorization": None, **self._headers}
        try:
            with _address_env_cleared():
                return JobSubmissionClient(self.url, headers=headers)
        except Exception as exc:  # ConnectionError, AuthenticationError, RuntimeError
            raise ClusterError(
                f"{self._source}: cannot use the Ray Jobs API at {self.url}: {_first_line(exc)}"
            ) from None


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__
