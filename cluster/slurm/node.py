"""The node side of a SLURM-booted Ray cluster, called by the rendered sbatch script.

    python -m cluster.slurm.node prepare                 # batch host: fresh job dir + 0600 token
    python -m cluster.slurm.node node JOB_ID JOB_DIR INDEX [--head-address IP:PORT]  # under srun
    python -m cluster.slurm.node wait ADDRESS NODES --timeout S   # until every node has joined
    python -m cluster.slurm.node reap JOB_DIR            # kill what is left of this job's Ray

The job directory is a fresh `mkdtemp` below the user's root `/tmp/ftl-<uid>` on the batch host;
every node uses the same path, creating it where it does not exist, and refuses it (and the
root) unless it is a real directory of this user that nobody else can enter (lstat: a link
planted in /tmp is never followed). Each node removes its Ray temp dir, and the job directory
when it is the last one out; the batch script removes the job directory on its host.

`node` picks the node's derived port block (checked free), runs `ray start --block` in its own
process group, and on SIGTERM (scancel, time limit, the script's teardown) stops that group and
then every process that still carries this job's marker in its environment: proctrack/linuxproc
does not follow processes that detach, and `ray stop` would kill other jobs' Ray.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from cluster.procs import kill_marked
from cluster.slurm.layout import (
    PORT_RANGE_END,
    NodePorts,
    derive_ports,
    node_temp_dir,
    parse_node_addr,
    user_root,
)

# Every process of a job's Ray inherits this (workers from the raylet), so leftovers can be
# found by PID without touching other jobs: see `reap`.
MARKER_ENV = "FTLAUNCH_SLURM_JOB_DIR"
HEAD_ADDRESS_FILE = "head-address"
TOKEN_FILE = "token"
STOP_GRACE_S = 2.0  # well below SLURM's KillWait (30 s by default, 5 s in the test cluster)
MAX_PORT_ATTEMPTS = 32
RAY_BIN = Path(sys.executable).with_name("ray")


def log(message: str) -> None:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime())
    print(f"[ftlaunch-slurm {stamp}Z t={time.time():.3f}] {message}", flush=True)


def private_dir(path: Path) -> Path:
    """`path` as a directory of this user that nobody else can enter: created 0700 when it does
    not exist, refused (SystemExit, one line) when it is a link, someone else's, or open.
    """
    with contextlib.suppress(FileExistsError):
        path.mkdir(mode=0o700)
    info = os.lstat(path)
    if not stat.S_ISDIR(info.st_mode):
        raise SystemExit(f"error: {path}: not a directory (a link?); refusing to use it")
    if info.st_uid != os.getuid():
        raise SystemExit(f"error: {path}: belongs to uid {info.st_uid}; refusing to use it")
    if info.st_mode & 0o077:
        raise SystemExit(
            f"error: {path}: mode {stat.S_IMODE(info.st_mode):o} lets others in; refusing to use it"
        )
    return path


def prepare() -> Path:
    """Create a fresh job directory (0700, below the user's 0700 root) holding a new auth token
    (0600); return it. A requeued job gets a new one: nothing is reused."""
    root = private_dir(user_root(os.getuid()))
    directory = Path(tempfile.mkdtemp(dir=root))  # 0700, an unpredictable name
    fd = os.open(directory / TOKEN_FILE, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(secrets.token_hex(32))
    return directory


def node_dirs(directory: Path, index: int) -> Path:
    """On this node: the checked root and job directory, and a new Ray temp dir; returns it.

    Raises:
        SystemExit: a directory on the way fails its checks, or the temp dir already exists.
    """
    if directory.parent != user_root(os.getuid()):
        raise SystemExit(f"error: {directory}: not a job directory of this user")
    private_dir(directory.parent)
    private_dir(directory)
    temp_dir = node_temp_dir(directory, index)
    try:
        temp_dir.mkdir(mode=0o700)
    except FileExistsError:
        raise SystemExit(f"error: {temp_dir}: already exists; refusing to share it") from None
    return temp_dir


def remove_node_dirs(directory: Path, index: int) -> None:
    """Drop this node's Ray temp dir, and the job directory if nothing else is left in it (the
    batch host's holds the token until the batch script removes it)."""
    shutil.rmtree(node_temp_dir(directory, index), ignore_errors=True)
    with contextlib.suppress(OSError):
        directory.rmdir()


def node_ip(node_name: str | None) -> str:
    """The IP SLURM reaches this node at (its NodeAddr), resolved; else this host's name."""
    address = None
    if node_name:
        out = subprocess.run(
            ["scontrol", "show", "node", "-o", node_name], capture_output=True, text=True
        )
        address = parse_node_addr(out.stdout) if out.returncode == 0 else None
    return socket.gethostbyname(address or socket.gethostname())


def ports_are_free(ports: list[int]) -> bool:
    for port in ports:
        with socket.socket() as sock:
            # As Ray's servers do: a port whose old connections linger in TIME_WAIT is free.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(("0.0.0.0", port))
            except OSError:
                return False
    return True


def choose_ports(job_id: str, index: int) -> NodePorts:
    for attempt in range(MAX_PORT_ATTEMPTS):
        ports = derive_ports(job_id, index, attempt)
        if ports_are_free(ports.all()):
            return ports
        log(
            f"node {index}: ports {ports.gcs}-{ports.metrics_export} are busy, trying the next block"
        )
    raise SystemExit(
        f"node {index}: no free port block below {PORT_RANGE_END} after {MAX_PORT_ATTEMPTS} tries"
    )


def ray_start_command(
    ip: str, ports: NodePorts, temp_dir: Path, head_address: str | None
) -> list[str]:
    cpus = os.environ.get("SLURM_CPUS_ON_NODE") or str(os.cpu_count())
    command = [
        str(RAY_BIN),
        "start",
        "--block",
        f"--node-ip-address={ip}",
        f"--temp-dir={temp_dir}",
        f"--num-cpus={cpus}",
        "--disable-usage-stats",
        *ports.ray_start_args(head=head_address is None),
    ]
    gpus = os.environ.get("SLURM_GPUS_ON_NODE")
    if gpus:
        command.append(f"--num-gpus={gpus}")
    if head_address is None:
        return [*command, "--head", "--include-dashboard=false"]
    return [*command, f"--address={head_address}"]


def run_node(job_id: str, directory: Path, index: int, head_address: str | None) -> int:
    """Run one Ray node of the job until Ray exits or we are told to stop; clean up after it."""
    temp_dir = node_dirs(directory, index)
    ip = node_ip(os.environ.get("SLURMD_NODENAME"))
    ports = choose_ports(job_id, index)
    command = ray_start_command(ip, ports, temp_dir, head_address)
    env = dict(os.environ, **{MARKER_ENV: str(directory)})
    role = "head" if head_address is None else "worker"
    stopping: list[int] = []

    def on_signal(signum: int, frame: object) -> None:
        stopping.append(signum)

    # Before Popen: a TERM in between would orphan `ray start` outside the job's process tree.
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, on_signal)
    if stopping:
        remove_node_dirs(directory, index)
        return 0
    log(f"node {index} ({role}) on {ip}: starting Ray, ports {ports.gcs}-{ports.metrics_export}")
    ray = subprocess.Popen(command, env=env, start_new_session=True)
    published = False
    while ray.poll() is None and not stopping:
        if head_address is None and not published and _listening(ip, ports.gcs):
            _publish(directory / HEAD_ADDRESS_FILE, f"{ip}:{ports.gcs}")
            published = True
        time.sleep(0.2)
    code = ray.returncode
    stop_group(ray)
    killed = reap(directory)
    remove_node_dirs(directory, index)
    log(
        f"node {index}: Ray stopped ({'signal' if stopping else f'exit {code}'}), {killed} leftovers killed"
    )
    return 0 if stopping else (code or 0)


def _listening(ip: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((ip, port)) == 0


def _publish(path: Path, text: str) -> None:
    partial = path.with_name(path.name + ".tmp")
    partial.write_text(text + "\n")
    partial.replace(path)


def stop_group(process: subprocess.Popen) -> None:
    """TERM the process group (`ray start --block` stops its children), KILL after the grace."""
    try:
        os.killpg(process.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=STOP_GRACE_S)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def reap(directory: Path) -> int:
    """KILL every leftover process of this job on this host; returns how many there were."""
    return kill_marked(f"{MARKER_ENV}={directory}")


def wait_for_nodes(address: str, nodes: int, timeout_s: float) -> int:
    """Block until `nodes` Ray nodes are alive; 0 when they are, 1 (with one line) on timeout."""
    import ray

    started = time.monotonic()
    ray.init(address=address, logging_level=logging.ERROR, log_to_driver=False)
    try:
        alive = 0
        while time.monotonic() - started < timeout_s:
            alive = sum(1 for node in ray.nodes() if node.get("Alive"))
            if alive >= nodes:
                log(f"all {nodes} Ray nodes joined ({time.monotonic() - started:.1f} s of waiting)")
                return 0
            time.sleep(0.5)
    finally:
        ray.shutdown()
    print(
        f"error: only {alive} of {nodes} Ray nodes joined within {timeout_s:.0f} s; "
        "see the node lines above and the Ray logs under the job's temp dirs",
        file=sys.stderr,
        flush=True,
    )
    return 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cluster.slurm.node")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("prepare")
    node = sub.add_parser("node")
    node.add_argument("job_id")
    node.add_argument("job_dir", type=Path)
    node.add_argument("index", type=int)
    node.add_argument("--head-address")
    wait = sub.add_parser("wait")
    wait.add_argument("address")
    wait.add_argument("nodes", type=int)
    wait.add_argument("--timeout", type=float, required=True)
    sub.add_parser("reap").add_argument("job_dir", type=Path)
    args = parser.parse_args(argv)
    if args.command == "prepare":
        print(prepare())
        return 0
    if args.command == "node":
        index = args.index + int(os.environ.get("SLURM_PROCID", "0"))  # workers: 1 + task rank
        return run_node(args.job_id, args.job_dir, index, args.head_address)
    if args.command == "wait":
        return wait_for_nodes(args.address, args.nodes, args.timeout)
    killed = reap(args.job_dir)
    if killed:
        log(f"killed {killed} leftover processes of {args.job_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
