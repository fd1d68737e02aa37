"""A real Ray cluster for integration tests: `ray start --head --block` with token auth on a
free loopback port and a private temp dir, stopped by PID (never `ray stop`, which would kill
every Ray on the machine)."""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.integration.runs import Reference, run_reference

RAY_BIN = Path(sys.executable).with_name("ray")


def cluster_env(cluster: dict[str, str]) -> dict[str, str]:
    """The token env a client of `cluster` needs (everything but its address)."""
    return {k: v for k, v in cluster.items() if k != "address"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout_s}s")


def private_temp_dir(prefix: str = "ftl-ray") -> Path:
    """A fresh Ray temp dir under /tmp: short, since Ray's socket paths are length-limited."""
    return Path("/tmp") / f"{prefix}-{secrets.token_hex(4)}"


def ray_start(
    args: list[str], env: dict[str, str], log: Path, prefix: tuple[str, ...] = ()
) -> subprocess.Popen:
    """`ray start --block ARGS` on loopback without usage stats, in a session of its own (stop it
    with `stop_group`), its output to `log`; `prefix` wraps the command (e.g. `unshare`)."""
    common = ["--block", "--node-ip-address=127.0.0.1", "--disable-usage-stats"]
    with log.open("w") as out:
        return subprocess.Popen(
            [*prefix, str(RAY_BIN), "start", *args, *common],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def head_args(port: int, temp_dir: Path, *more: str) -> list[str]:
    """A head without the dashboard on `port`, with its own temp dir."""
    return [
        "--head",
        f"--port={port}",
        "--include-dashboard=false",
        f"--temp-dir={temp_dir}",
        *more,
    ]


@pytest.fixture(scope="session")
def ray_head(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """Start a 2-CPU head; yields the env (address, token) a client needs."""
    port = free_port()
    env = dict(os.environ, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32))
    log = tmp_path_factory.mktemp("ray") / "head.log"
    head = ray_start(head_args(port, private_temp_dir(), "--num-cpus=2"), env, log)
    try:
        wait_for_port(port, timeout_s=60)
        wait_for_nodes(f"127.0.0.1:{port}", env, 1, head, log)
        yield {
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN": env["RAY_AUTH_TOKEN"],
            "address": f"127.0.0.1:{port}",
        }
    finally:
        stop_group(head)


def count_alive_nodes(address: str, env: dict[str, str]) -> int:
    code = (
        f"import ray; ray.init(address={address!r}, logging_level='ERROR', log_to_driver=False);"
        "print('ALIVE', sum(1 for n in ray.nodes() if n['Alive']))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
    )
    # Only our line: the driver may print other things (an autoscaler's events).
    counts = [int(x.split()[1]) for x in out.stdout.splitlines() if x.startswith("ALIVE ")]
    return counts[-1] if out.returncode == 0 and counts else 0


def wait_for_nodes(
    address: str, env: dict[str, str], count: int, process: subprocess.Popen, log: Path
) -> None:
    """Until `count` nodes are alive at `address` (a driver can connect only once the head's
    raylet has registered, which a loaded machine delays past the GCS port opening)."""
    deadline = time.monotonic() + 90
    while count_alive_nodes(address, env) < count:
        if time.monotonic() > deadline or process.poll() is not None:
            raise RuntimeError(f"{count} Ray node(s) not alive at {address}; see {log}")
        time.sleep(1)


def stop_group(process: subprocess.Popen) -> None:
    """SIGTERM the process group (a `ray start --block` stops its children), then SIGKILL."""
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(
            timeout=5
        )  # `ray start --block` is slow to exit on TERM; the group goes anyway
    except ProcessLookupError:
        return
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)


@contextlib.contextmanager
def moto_s3(logs: Path) -> Iterator[str]:
    """A real local S3 server (moto in server mode, on loopback) for the test's duration;
    yields its host:port. Clients use the credentials `testing`/`testing`."""
    port = free_port()
    server = subprocess.Popen(
        [str(Path(sys.executable).with_name("moto_server")), "-H", "127.0.0.1", "-p", str(port)],
        stdout=(logs / "moto.log").open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 30
        while socket.socket().connect_ex(("127.0.0.1", port)) != 0:
            if time.monotonic() > deadline:
                raise RuntimeError("moto_server did not start")
            time.sleep(0.2)
        yield f"127.0.0.1:{port}"
    finally:
        stop_group(server)


@pytest.fixture()
def private_mount_cluster(tmp_path: Path) -> Iterator[dict[str, str]]:
    """Head (1 CPU) + a second node (1 CPU) in a private mount namespace where `tmp_path` is an
    empty tmpfs: that node cannot see anything the test writes there (no shared filesystem)."""
    with two_node_cluster(tmp_path) as (cluster, _node):
        yield cluster


@contextlib.contextmanager
def two_node_cluster(tmp_path: Path) -> Iterator[tuple[dict[str, str], subprocess.Popen]]:
    """`private_mount_cluster`, with the second node's `ray start --block` process (the leader
    of its process group: killing the group is losing the node)."""
    port = free_port()
    env = dict(os.environ, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32))
    address = f"127.0.0.1:{port}"
    logs = tmp_path / "ray-logs"
    logs.mkdir()
    head = ray_start(head_args(port, private_temp_dir(), "--num-cpus=1"), env, logs / "head.log")
    node = None
    try:
        wait_for_port(port, timeout_s=60)
        node = ray_start(
            [f"--address={address}", "--num-cpus=1"],
            env,
            logs / "node.log",
            prefix=(
                "unshare",
                "-m",
                "sh",
                "-c",
                f'mount -t tmpfs tmpfs {tmp_path} && exec "$@"',
                "sh",
            ),
        )
        wait_for_nodes(address, env, 2, node, logs)
        cluster = {
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN": env["RAY_AUTH_TOKEN"],
            "address": address,
        }
        yield cluster, node
    finally:
        if node is not None:
            stop_group(node)
        stop_group(head)


@pytest.fixture(scope="session")
def uninterrupted(
    tmp_path_factory: pytest.TempPathFactory, tiny_bert: Path, keyword_data: dict[str, Path]
) -> Callable[[int], Reference]:
    """The uninterrupted run of tests/integration/runs.py:job_args for a ZeRO stage, run once per
    session and shared by every test that compares with it or watches it."""
    runs: dict[int, Reference] = {}

    def get(stage: int) -> Reference:
        if stage not in runs:
            root = tmp_path_factory.mktemp(f"uninterrupted-{stage}")
            runs[stage] = run_reference(root, tiny_bert, keyword_data, stage)
        return runs[stage]

    return get


def write_job(
    tmp_path: Path, model: Path, data: dict[str, Path], cluster: str, name: str = "placement"
) -> Path:
    """A 2-step tiny-BERT job with this `cluster` section, writing to tmp_path/out."""
    job = tmp_path / "job.yaml"
    job.write_text(
        f"""
name: {name}
model: {{path: {model}}}
data: {{train: {data["train"]}, validation: {data["validation"]}, test: {data["test"]},
        max_length: 32, cache_dir: {tmp_path.parent / "cache"}}}
training: {{epochs: 1, max_steps: 2, micro_batch_size: 8, log_every: 1}}
engine: {{zero_stage: 0}}
cluster: {cluster}
output: {{dir: {tmp_path / "out"}}}
"""
    )
    return job
