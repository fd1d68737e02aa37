"""The embedded Ray cluster of `ftlaunch run` without `cluster.address`: one `ray start --head`
on this machine, closed by default.

- Loopback only. Ray turns a 127.0.0.1 node address into the machine's external IP, and its
  servers then listen beyond loopback. `RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0` is Ray's own switch
  for a one-machine cluster (its default on macOS and Windows): node address 127.0.0.1, every
  server bound to loopback. The cluster started here gets it in its environment; the driver
  (this process) reads it once, when ray is imported, so `local_only_driver` sets Ray's constant
  for as long as the cluster runs, and puts it back after (a driver that later joins a remote
  cluster needs its real address).
- A private temp dir: Ray makes its temp dir world-writable, so it gets one inside a `mkdtemp`
  directory (0700) under /tmp (short, since Ray's socket paths are limited to about 107 bytes),
  not the shared /tmp/ray; removed when the cluster stops.
- Token auth: `RAY_AUTH_MODE=token` and the run's token in the cluster's environment.
- Lean unless the dashboard is asked for: no log monitor (the driver does not take workers'
  logs, `log_to_driver=False`), no autoscaler monitor, no metrics export and no task events
  (nothing reads them without Ray's dashboard). They cost CPU beside the ranks on every step
  (`benchmarks/overhead.py --variants`, docs/benchmarks.md). A RAY_* setting in the user's
  environment wins.
- Stopped by process group, never with `ray stop` (which stops every Ray of the user on the
  machine). If the launcher dies without stopping it, the kernel SIGKILLs `ray start`
  (PR_SET_PDEATHSIG), and Ray's own reaper, which `ray start --block` runs in the group for
  exactly that case, stops the rest of the group.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

from cluster.auth.secrets import without_secrets
from cluster.errors import ClusterError
from cluster.ray.reaper import MARKER_ENV, start_reaper
from trainer.config.cluster import ClusterConfig

RAY_BIN = Path(sys.executable).with_name("ray")
START_TIMEOUT_S = 120
STOP_GRACE_S = 10
READY_POLL_S = 0.05
LOG_FILE = "ray-start.log"
# Ray's system config, read from RAY_<name> by every Ray process: metrics collection and export
# (the raylet's, the agent's and each worker's OpenCensus/Prometheus path) and task-event reports
# (the state API and the dashboard's task views).
LEAN_ENV = {"RAY_enable_metrics_collection": "0", "RAY_task_events_report_interval_ms": "0"}
# No log monitor (it tails every log file of the node for drivers, and ours takes none), no
# autoscaler monitor (a one-machine cluster never scales; `--no-monitor` is a hidden flag of
# `ray start`, checked by tests/unit/cluster/test_embedded.py against the installed Ray).
LEAN_FLAGS = ["--include-log-monitor=false", "--no-monitor"]
_PR_SET_PDEATHSIG = 1


class EmbeddedCluster:
    """A private one-machine Ray: `address = cluster.start()`, then `cluster.stop()`."""

    def __init__(
        self,
        num_cpus: int,
        token: str,
        dashboard: tuple[bool, str],
        environ: Mapping[str, str],
        fresh_token: bool = False,
    ) -> None:
        """`dashboard` is (start it, interface); `environ` the cluster's environment (without
        secrets: workers receive theirs sealed); `fresh_token`: made for this run (written to
        the run directory for the user), not the user's own."""
        self._num_cpus = num_cpus
        self.token = token
        self.fresh_token = fresh_token
        self._dashboard, self._dashboard_host = dashboard
        self._environ = dict(environ)
        self.temp_dir: Path | None = None  # ours (0700); Ray's own is `ray` inside it
        self._process: subprocess.Popen[bytes] | None = None
        self._port: list[int] = []  # GCS, Ray client, dashboard agent
        self.reaper: subprocess.Popen[bytes] | None = None  # stops the group if we die

    def start(self) -> str:
        """Start `ray start --head` and wait until it accepts connections; returns its address.

        Raises:
            ClusterError: it exited or did not listen within START_TIMEOUT_S (its last log line).
        """
        self.launch()
        return self.wait_ready()

    def launch(self) -> None:
        """Spawn `ray start --head` and return at once: it comes up while the launcher goes on
        (checking and preparing data); `wait_ready` waits for it. Idempotent."""
        if self._process is not None:
            return
        self.temp_dir = Path(tempfile.mkdtemp(prefix="ftl-ray-", dir="/tmp"))
        self._port = free_ports(3)
        log = (self.temp_dir / LOG_FILE).open("wb")
        try:
            self._process = subprocess.Popen(
                self.command(self.temp_dir / "ray", self._port),
                env=self.environment(),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own group: stopped as one, and a Ctrl-C is ours
                preexec_fn=_die_with_parent,
            )
        except BaseException:
            self.stop()
            raise
        finally:
            log.close()

    def command(self, ray_temp: Path, ports: list[int]) -> list[str]:
        """The `ray start` command line (pure): Ray's temp dir, and the GCS, Ray client and
        dashboard agent ports."""
        port, client_port, agent_port = ports
        command = [
            str(RAY_BIN),
            "start",
            "--head",
            "--block",
            "--node-ip-address=127.0.0.1",
            f"--port={port}",
            f"--ray-client-server-port={client_port}",
            f"--dashboard-agent-listen-port={agent_port}",
            f"--num-cpus={self._num_cpus}",
            f"--temp-dir={ray_temp}",
            "--disable-usage-stats",
            f"--include-dashboard={str(self._dashboard).lower()}",
        ]
        if self._dashboard:
            command.append(f"--dashboard-host={self._dashboard_host}")
        else:
            command += LEAN_FLAGS
        return command

    def environment(self) -> dict[str, str]:
        """The cluster's environment (pure): the lean settings unless the user set them, the
        token, loopback only."""
        return dict(
            lean_env(self._dashboard) | self._environ,
            RAY_AUTH_MODE=self._environ.get("RAY_AUTH_MODE", "token"),  # not token: --insecure
            RAY_AUTH_TOKEN=self.token,
            RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0",
        )

    def wait_ready(self) -> str:
        """Wait until the launched cluster accepts connections; returns its address.

        Raises:
            ClusterError: it exited or did not listen within START_TIMEOUT_S (its last log line).
        """
        self.launch()
        assert self._process is not None
        port = self._port[0]
        deadline = time.monotonic() + START_TIMEOUT_S
        while not _listening(port):
            if self._process.poll() is not None or time.monotonic() > deadline:
                tail = self._log_tail()
                self.stop()
                raise ClusterError(f"cluster: the embedded Ray did not start: {tail}")
            time.sleep(READY_POLL_S)
        return f"127.0.0.1:{port}"

    def _log_tail(self) -> str:
        assert self.temp_dir is not None
        try:
            lines = (self.temp_dir / LOG_FILE).read_text(errors="replace").strip().splitlines()
        except OSError:
            return "no log"
        return lines[-1] if lines else "no output"

    @property
    def process_group(self) -> int | None:
        """The process group of `ray start` and everything it started (None: not running)."""
        return self._process.pid if self._process is not None else None

    def stop(self, grace_s: float = STOP_GRACE_S) -> None:
        """TERM the cluster's process group, KILL what is left after `grace_s`, remove the
        temp dir. Idempotent."""
        process, self._process = self._process, None
        if process is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=grace_s)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        if self.temp_dir is not None:
            shutil.rmtree(self.temp_dir, ignore_errors=True)
            self.temp_dir = None


def launch_embedded(cluster: ClusterConfig) -> EmbeddedCluster:
    """Spawn the embedded cluster of `cluster` (no address) without waiting for it, so it comes
    up while the launcher checks and prepares the data; `RayBackend` waits for it and connects.

    A fresh token per run unless the user brought one (RAY_AUTH_TOKEN; the driver presents it
    too). Every process of the embedded Ray inherits the reaper's marker (MARKER_ENV), and all of
    them are in the process group of its `ray start`: once that is up, the reaper stops them all
    when this process ends, even by SIGKILL (Ray's own parent-death signal covers only some of
    them). The reaper starts with the cluster: the launcher may be killed while it prepares the
    data. Ray blocks SIGINT in what it starts: a Ctrl-C reaches only us.
    """
    fresh = "RAY_AUTH_TOKEN" not in os.environ
    if fresh:
        os.environ["RAY_AUTH_TOKEN"] = secrets.token_hex(32)
    os.environ[MARKER_ENV] = secrets.token_hex(8)
    embedded = EmbeddedCluster(
        num_cpus=cluster.num_cpus or os.cpu_count() or 1,
        token=os.environ["RAY_AUTH_TOKEN"],
        dashboard=(cluster.dashboard, cluster.dashboard_host),
        environ=without_secrets(os.environ, cluster.secret_env),
        fresh_token=fresh,
    )
    embedded.launch()
    embedded.reaper = start_reaper(os.environ[MARKER_ENV], embedded.process_group)
    return embedded


def lean_env(dashboard: bool) -> dict[str, str]:
    """Ray's settings that keep its optional work off (none when the dashboard shows it)."""
    return {} if dashboard else dict(LEAN_ENV)


@contextlib.contextmanager
def local_only_driver() -> Iterator[None]:
    """While active, this process resolves a loopback address the way the cluster above does
    (Ray's ENABLE_RAY_CLUSTER, read from RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER at import): the
    driver then connects to, and listens on, 127.0.0.1 only."""
    from ray._private import ray_constants

    saved = ray_constants.ENABLE_RAY_CLUSTER
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved


def free_ports(count: int) -> list[int]:
    """`count` distinct loopback ports free right now (held together while choosing)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _die_with_parent() -> None:
    """In the child, before exec: SIGKILL when the launcher dies, however it dies (Linux; a
    SIGTERM would let `ray start` wait for its children to stop gracefully, maybe for long)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
