"""What `benchmarks/overhead.py` watches from outside a running `ftlaunch run`, without touching
the product: the CPU each of Ray's processes takes during the timed steps, when each startup phase
ended, and (for the pinned variant) the CPU affinity of the rank workers.

- CPU: every SAMPLE_S the whole process tree under the launcher is read with psutil; a process's
  CPU seconds in the steady window are its user+system time at the window's end minus that at its
  start (0 at its start if it appeared later). Processes are named by their Ray title (`ray::X`),
  or their program (gcs_server, raylet, the dashboard and runtime-env agents, the log monitor).
- Phases: the moments the run directory's staging area (data checked, cluster being started), the
  first `raylet`, the metrics file (collector up), the ranks' `rank_start` (worker group), the
  `start` record (model and engine built) and step 1 first appear.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from pathlib import Path

import psutil

SAMPLE_S = 0.25
WORKER_TITLE = "RayTrainWorker"


def process_kind(process: psutil.Process) -> str:
    """A stable name for one of the run's processes."""
    try:
        cmdline = process.cmdline()
    except psutil.Error:
        return "?"
    first = cmdline[0] if cmdline else process.name()
    if first.startswith("ray::"):
        title = first.split()[0].removeprefix("ray::")
        return f"ray::{title.split('.')[0]}"
    joined = " ".join(cmdline[:4])
    for marker, kind in (
        ("gcs_server", "gcs_server"),
        ("raylet", "raylet"),
        ("dashboard/agent.py", "dashboard agent"),
        ("runtime_env/agent", "runtime-env agent"),
        ("log_monitor", "log monitor"),
        ("dashboard/dashboard.py", "dashboard"),
        ("ray start", "ray start"),
        (" start --head", "ray start"),
        ("ftlaunch", "ftlaunch driver"),
    ):
        if marker in joined:
            return kind
    return Path(first).name or "?"


class TreeSampler:
    """Samples the CPU times of every process under `root_pid` in a thread; `mark()` opens and
    closes the steady window."""

    def __init__(self, root_pid: int, pin_workers: bool = False) -> None:
        self._root = root_pid
        self._pin = pin_workers
        self._seen: dict[int, tuple[str, float]] = {}  # pid -> (kind, cpu seconds)
        self._window: list[dict[int, float]] = []
        self._pinned: set[int] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self.first_raylet: float | None = None

    def __enter__(self) -> TreeSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def mark(self) -> None:
        """Snapshot now (the first call opens the window, the second closes it)."""
        self._sample()
        self._window.append({pid: cpu for pid, (_, cpu) in self._seen.items()})

    def window_cpu(self) -> dict[str, float]:
        """CPU seconds per process kind inside the window (empty unless it was closed)."""
        if len(self._window) < 2:
            return {}
        start, end = self._window[0], self._window[1]
        totals: dict[str, float] = {}
        for pid, cpu in end.items():
            kind = self._seen[pid][0]
            totals[kind] = totals.get(kind, 0.0) + cpu - start.get(pid, 0.0)
        return totals

    def _loop(self) -> None:
        while not self._stop.wait(SAMPLE_S):
            self._sample()

    def _sample(self) -> None:
        try:
            root = psutil.Process(self._root)
            processes = [root, *root.children(recursive=True)]
        except psutil.Error:
            return
        for process in processes:
            with contextlib.suppress(psutil.Error):
                times = process.cpu_times()
                # Named at every sample: a Ray worker starts as a plain python process and
                # takes its title (ray::RayTrainWorker) later.
                kind = process_kind(process)
                self._seen[process.pid] = (kind, times.user + times.system)
                if kind == "raylet" and self.first_raylet is None:
                    self.first_raylet = time.time()
                if self._pin and WORKER_TITLE in kind:
                    self._pin_worker(process)

    def _pin_worker(self, process: psutil.Process) -> None:
        """Each rank worker on its own core, counted from the last one (Ray keeps the rest)."""
        if process.pid in self._pinned:
            return
        cpus = sorted(os.sched_getaffinity(0))
        core = cpus[-1 - len(self._pinned) % len(cpus)]
        with contextlib.suppress(psutil.Error):
            for thread in process.threads():  # affinity is per thread on Linux
                with contextlib.suppress(OSError):
                    os.sched_setaffinity(thread.id, {core})
            self._pinned.add(process.pid)


PHASE_EVENTS = ("rank_start", "start")


def read_phases(output_dir: Path, seen: dict[str, float]) -> int:
    """Note in `seen` the first time each phase's mark is visible; returns the highest step."""
    now = time.time()
    staging = [*output_dir.glob(".run-*")]
    if staging:
        seen.setdefault("staging", now)
    paths = [*(p / "metrics.jsonl" for p in staging), output_dir / "metrics.jsonl"]
    step = 0
    for path in paths:
        try:
            lines = path.read_text().splitlines()
        except OSError:
            continue
        seen.setdefault("metrics", now)
        for line in lines:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:  # a line still being written
                continue
            event = record.get("event")
            if event in PHASE_EVENTS:
                seen.setdefault(event, now)
            if event == "train":
                step = max(step, int(record.get("step", 0)))
    if step >= 1:
        seen.setdefault("step 1", now)
    return step


PHASE_ORDER = (
    ("staging", "data checked, run dir claimed"),
    ("raylet", "ray start (raylet up)"),
    ("metrics", "ray up, driver in, collector"),
    ("rank_start", "worker group up"),
    ("start", "model + engine built"),
    ("step 1", "first optimizer step"),
)
