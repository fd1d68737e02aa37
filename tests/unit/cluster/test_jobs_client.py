"""The Jobs API client against a local HTTP server that records what it is sent: a cluster that
answers without asking for a token never receives ours (not from our requests, not from Ray's
SDK, which adds the local token by itself under RAY_AUTH_MODE=token); plain http to another host
is warned about."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

import pytest

from cluster.errors import ClusterError
from cluster.ray.jobs import JobsClient, check_access, plain_http_warning

TOKEN = "local-token-" + "7" * 52


class OpenJobsApi(BaseHTTPRequestHandler):
    """A Jobs API with token auth off: answers everything, remembers every request's headers."""

    seen: ClassVar[list[tuple[str, str | None]]] = []

    def do_GET(self) -> None:
        self.seen.append((self.path, self.headers.get("Authorization")))
        body = {"version": "4", "ray_version": "2.60.0", "ray_commit": "x", "session_name": "s"}
        data = json.dumps([] if self.path.startswith("/api/jobs") else body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        return None


@pytest.fixture()
def open_api() -> Iterator[str]:
    OpenJobsApi.seen = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), OpenJobsApi)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_an_open_cluster_is_refused_and_with_insecure_never_gets_our_token(
    open_api: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    monkeypatch.setenv("RAY_AUTH_TOKEN", TOKEN)  # what Ray's SDK would add by itself
    with pytest.raises(ClusterError, match="accepts requests without a token"):
        check_access(open_api, TOKEN, "--address", allow_insecure=False)
    token = check_access(open_api, TOKEN, "--address", allow_insecure=True)
    assert token is None
    client = JobsClient(open_api, token, "--address")
    assert client.list_tagged() == []
    client._sdk_client()  # Ray's SubmissionClient checks the server's version on creation
    paths = [path for path, _ in OpenJobsApi.seen]
    assert paths.count("/api/version") >= 2 and "/api/jobs/" in paths
    assert [auth for _, auth in OpenJobsApi.seen] == [None] * len(paths)


@pytest.mark.parametrize(
    ("url", "warned"),
    [
        ("http://127.0.0.1:8265", False),
        ("http://localhost:8265", False),
        ("http://[::1]:8265", False),
        ("https://head.example:8265", False),
        ("http://head.example:8265", True),
        ("http://10.0.0.5:8265", True),
    ],
)
def test_plain_http_to_another_host_is_warned_about(url: str, warned: bool) -> None:
    warning = plain_http_warning(url)
    assert (warning is not None) == warned
    if warning:
        assert warning.startswith(f"warning: {url} is plain http") and "unencrypted" in warning


@pytest.mark.parametrize(
    ("version", "environ", "refused"),
    [
        ("2.60.0", {}, None),
        ("2.52.0", {"RAY_AUTH_MODE": "token"}, None),
        ("3.0.0.dev0", {}, None),
        ("2.51.1", {}, "ray: version 2.51.1 has no token authentication"),
        ("2.40.0", {"RAY_AUTH_MODE": "token"}, "ray: version 2.40.0 has no token authentication"),
        ("2.60.0", {"RAY_AUTH_MODE": "disabled"}, "RAY_AUTH_MODE: is 'disabled'"),
    ],
)
def test_a_ray_without_token_auth_is_refused_unless_insecure(
    version: str, environ: dict[str, str], refused: str | None
) -> None:
    from cluster.auth.mode import check_closed

    check_closed(version, environ, insecure=True)  # the user's explicit choice
    if refused is None:
        check_closed(version, environ, insecure=False)
        return
    with pytest.raises(ClusterError) as caught:
        check_closed(version, environ, insecure=False)
    assert str(caught.value).startswith(refused) and "--insecure" in str(caught.value)
