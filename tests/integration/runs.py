"""Launching `ftlaunch run` from integration tests and watching it from outside, as a user (or an
attacker) would: its output in files, its live metrics, its processes and the sockets they
listen on. Every launched run is stopped by process group, whatever the test's outcome.

Also the uninterrupted reference runs that several modules compare with (fault tolerance, the
closed-by-default checks), run once per session (`uninterrupted` in conftest.py).
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tests.conftest import REPO_ROOT

STEPS_PER_EPOCH, TOTAL_STEPS, CHECKPOINT_EVERY = 8, 48, 12
# Planted in the reference run's environment: the listed one must reach the workers, the
# lookalike (named like a credential, not listed) must not, and neither value may show anywhere.
LISTED_SECRET = ("FTL_LISTED_SECRET", "listed-value-3f9a1c")
PLANTED_SECRET = ("FTL_PLANTED_TOKEN", "planted-value-8d2e7b")


def job_args(data: dict[str, Path], out: Path, stage: int) -> list[str]:
    """256 rows, 2 workers x 16 = 8 steps per epoch, 6 epochs = 48 steps, a checkpoint every 12
    steps (12 and 36 in the middle of an epoch; the last step is one too)."""
    sets = {
        "data.train": data["train"],
        "data.validation": data["validation"],
        "data.test": data["test"],
        "data.max_length": 32,
        "output.dir": out,
        "training.epochs": TOTAL_STEPS // STEPS_PER_EPOCH,
        "training.micro_batch_size": 16,
        "training.eval_every": 24,
        "training.log_every": 8,
        "training.checkpoint_every": CHECKPOINT_EVERY,
        "training.record_sample_ids": "true",
        "training.max_failures": 3,
        "optim.lr": 0.002,
        "engine.zero_stage": stage,
        "output.keep_last": 2,
        "cluster.secret_env": f"[{LISTED_SECRET[0]}]",
    }
    return [a for k, v in sets.items() for a in ("--set", f"{k}={v}")]


def write_job(directory: Path, model: Path) -> Path:
    job = directory / "job.yaml"
    job.write_text(f"model: {{path: {model}}}\ndata: {{train: x, validation: y, test: z}}\n")
    return job


class Launched:
    """A `ftlaunch run` in its own session, its output going to files (a pipe nobody reads
    would block it)."""

    def __init__(self, process: subprocess.Popen[bytes], logs: Path) -> None:
        self.process, self.logs = process, logs
        self.pid = process.pid

    def wait(self, timeout: float) -> int:
        return self.process.wait(timeout=timeout)

    def poll(self) -> int | None:
        return self.process.poll()

    def send_signal(self, signum: int) -> None:
        self.process.send_signal(signum)

    def stdout(self) -> str:
        return (self.logs / "stdout.log").read_text(errors="replace")

    def stderr(self) -> str:
        return (self.logs / "stderr.log").read_text(errors="replace")

    def tail(self) -> str:
        return self.stdout()[-2000:] + self.stderr()[-3000:]

    def processes(self) -> list[int]:
        """The launcher and everything it started (the embedded Ray included)."""
        import psutil

        try:
            return [self.pid, *(p.pid for p in psutil.Process(self.pid).children(recursive=True))]
        except psutil.NoSuchProcess:
            return []


@contextlib.contextmanager
def launched(
    job: Path, args: list[str], logs: Path, env: dict[str, str] | None = None
) -> Iterator[Launched]:
    """Start `ftlaunch run`; on leaving, whatever happened, KILL its process group and every
    descendant (the embedded Ray runs in a session of its own) and reap them."""
    import psutil

    logs.mkdir(parents=True, exist_ok=True)
    with (logs / "stdout.log").open("wb") as out, (logs / "stderr.log").open("wb") as err:
        process = subprocess.Popen(
            [sys.executable, "-m", "launcher.cli", "run", str(job), *args],
            cwd=REPO_ROOT,
            env=dict(os.environ, **(env or {})),
            stdout=out,
            stderr=err,
            start_new_session=True,
        )
        try:
            yield Launched(process, logs)
        finally:
            try:
                descendants = psutil.Process(process.pid).children(recursive=True)
            except psutil.NoSuchProcess:
                descendants = []
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            for child in descendants:
                with contextlib.suppress(psutil.Error):
                    child.kill()
            process.wait(timeout=30)
            psutil.wait_procs(descendants, timeout=30)


def live_records(out: Path) -> list[dict]:
    """The metrics stream of the run in progress (the staging area's metrics.jsonl)."""
    found = []
    for path in out.glob(".run-*/metrics.jsonl"):
        for line in path.read_text().splitlines():
            with contextlib.suppress(json.JSONDecodeError):  # a line being written
                found.append(json.loads(line))
    return found


def records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def wait_for(
    condition: Callable[[], object], run: Launched, timeout_s: float, what: str, poll_s: float
) -> object:
    deadline = time.monotonic() + timeout_s
    while not (value := condition()):
        assert run.poll() is None, f"the run ended before {what}: {run.tail()}"
        assert time.monotonic() < deadline, f"no {what} within {timeout_s:.0f}s: {run.tail()}"
        time.sleep(poll_s)
    return value


def rank_pid(out: Path, run: Launched, rank: int) -> int:
    """The newest attempt's process of `rank` (from its own rank_start record), checked to be
    one of the run's processes: nothing else on the machine is ever killed."""
    pid = [r for r in live_records(out) if r["event"] == "rank_start" and r["rank"] == rank][-1][
        "pid"
    ]
    assert pid in run.processes()
    return pid


def listening_sockets(pids: list[int]) -> set[tuple[str, int, str]]:
    """(address, port, process name) of every TCP socket in LISTEN state that one of `pids`
    holds, from /proc/net/tcp{,6} and the processes' file descriptors (what `ss -ltnp` shows)."""
    owners: dict[str, str] = {}
    for pid in pids:
        with contextlib.suppress(OSError):
            name = Path(f"/proc/{pid}/comm").read_text().strip()
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    link = os.readlink(f"/proc/{pid}/fd/{fd}")
                    if link.startswith("socket:["):
                        owners[link[8:-1]] = name
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in owners:  # 0A: LISTEN
                address, port = fields[1].split(":")
                found.add((_proc_address(address), int(port, 16), owners[fields[9]]))
    return found


def _proc_address(hex_address: str) -> str:
    """/proc/net/tcp's address: 32-bit words in host (little-endian) byte order."""
    raw = bytes.fromhex(hex_address)
    ordered = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    return str(ipaddress.ip_address(ordered))


def is_loopback(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    mapped = getattr(ip, "ipv4_mapped", None)
    return ip.is_loopback or (mapped is not None and mapped.is_loopback)


@dataclass
class Reference:
    """An uninterrupted run, and what was seen of it from outside while it ran."""

    out: Path
    run: Launched
    listening: set[tuple[str, int, str]] = field(default_factory=set)
    ray_dirs: dict[str, int] = field(default_factory=dict)  # our temp dir -> its mode


def run_reference(root: Path, model: Path, data: dict[str, Path], stage: int) -> Reference:
    """The uninterrupted run of `job_args` (with the planted secrets), watched while it runs:
    the sockets its processes listen on and the embedded Ray's temp dir."""
    out = root / "out"
    env = dict([LISTED_SECRET, PLANTED_SECRET])
    with launched(write_job(root, model), job_args(data, out, stage), root / "logs", env) as run:
        seen = Reference(out, run)
        deadline = time.monotonic() + 400
        while run.poll() is None:
            assert time.monotonic() < deadline, f"the reference run did not finish: {run.tail()}"
            pids = run.processes()
            seen.listening |= listening_sockets(pids)
            seen.ray_dirs |= _ray_temp_dirs(pids)
            time.sleep(0.5)
        assert run.wait(timeout=400) == 0, run.tail()
    return seen


def _ray_temp_dirs(pids: list[int]) -> dict[str, int]:
    """The embedded Ray's own temp dir (the parent of its --temp-dir) and its mode."""
    import psutil

    found = {}
    for pid in pids:
        with contextlib.suppress(psutil.Error, OSError):
            for arg in psutil.Process(pid).cmdline():
                if arg.startswith("--temp-dir="):
                    ours = Path(arg.split("=", 1)[1]).parent
                    found[str(ours)] = ours.stat().st_mode & 0o777
    return found
