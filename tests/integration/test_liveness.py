"""Stalls, signals and collisions with real processes: the launcher with its embedded Ray, real
ranks, faults from outside (SIGSTOP, a debugger attach, a duty cycle of SIGSTOP/SIGCONT, SIGKILL,
Ctrl-C, a second launcher, a disk that fills).

To fit CI's time, each launcher run proves several things:
- run 1: rank 1 SIGSTOPped -> named silent with both ranks' stacks -> restart; then rank 1's
  training thread held by a debugger (ptrace) in its forward pass, so it never joins the
  all-reduce while its heartbeat goes on -> named stuck -> restart -> the run finishes;
- run 2: rank 1 slowed by a SIGSTOP/SIGCONT duty cycle -> flagged straggler; then the launcher
  is SIGKILLed -> nothing of the run is left after 30 s;
- run 3: a second launcher on the same output.dir -> exit 2 naming the first; Ctrl-C on the
  first -> checkpoint, exit 3, nothing left, the checkpoints intact;
- run 4: output.dir on a small tmpfs that fills during the second save -> commit_failed,
  exit 1 naming it, and the first checkpoint still passes --resume's verification.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.conftest import REPO_ROOT
from tests.integration.runs import live_records

pytestmark = [pytest.mark.ray, pytest.mark.dist]

PTRACE_DETACH, PTRACE_SEIZE, PTRACE_INTERRUPT, WALL = 17, 0x4206, 0x4207, 0x40000000
# Where a frozen rank has not yet reached its step's gradient all-reduce: reading its next batch,
# or in its forward pass (py-spy names frames `Class.method (file:line)`).
BEFORE_THE_ALL_REDUCE = re.compile(r"^ +(TimedIterator\.__next__|\w+\.loss) \(", re.M)
PY_SPY = Path(sys.executable).with_name("py-spy")


def job_file(tmp_path: Path, tiny_bert: Path) -> Path:
    job = tmp_path / "job.yaml"
    job.write_text(f"model: {{path: {tiny_bert}}}\ndata: {{train: x, validation: y, test: z}}\n")
    return job


def run_args(data: dict[str, Path], out: Path, **training: Any) -> list[str]:
    sets: dict[str, Any] = {
        "data.train": data["train"],
        "data.validation": data["validation"],
        "data.test": data["test"],
        "data.max_length": 32,
        "output.dir": out,
        "training.micro_batch_size": 16,
        "training.eval_every": 1000,
        "optim.lr": 0.002,
    } | {f"training.{k}": v for k, v in training.items()}
    return [a for k, v in sets.items() for a in ("--set", f"{k}={v}")]


def launch(job: Path, args: list[str], prefix: tuple[str, ...] = ()) -> subprocess.Popen[str]:
    command = [sys.executable, "-m", "launcher.cli", "run", str(job), *args]
    return subprocess.Popen(
        [*prefix, *command],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def wait_for(what: str, condition: Callable[[], Any], run: subprocess.Popen, timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        assert run.poll() is None, f"launcher exited ({run.returncode}) before {what}"
        assert time.monotonic() < deadline, f"no {what} within {timeout:.0f} s"
        time.sleep(0.1)
    return value


def rank_pids(out: Path) -> dict[int, int]:
    """rank -> pid of the newest attempt (from the rank_start records)."""
    return {r["rank"]: r["pid"] for r in live_records(out) if r["event"] == "rank_start"}


def events(out: Path, name: str) -> list[dict[str, Any]]:
    return [r for r in live_records(out) if r["event"] == name]


def run_processes(launcher: int) -> list[psutil.Process]:
    try:
        return psutil.Process(launcher).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def alive(processes: list[psutil.Process]) -> list[psutil.Process]:
    left = []
    for process in processes:
        with contextlib.suppress(psutil.NoSuchProcess):
            if process.is_running() and process.status() != psutil.STATUS_ZOMBIE:
                left.append(process)
    return left


def kill_run(run: subprocess.Popen) -> None:
    """Whatever happened: the launcher's group and every process it started, by PID."""
    processes = run_processes(run.pid)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(run.pid, signal.SIGKILL)
    for process in processes:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.kill()
    with contextlib.suppress(subprocess.TimeoutExpired):
        run.communicate(timeout=30)


def py_spy_dump(pid: int) -> str:
    command = [str(PY_SPY), "dump", "--nonblocking", "--pid", str(pid)]
    return subprocess.run(command, capture_output=True, text=True, timeout=30).stdout


def thread_section(dump: str, marker: str) -> tuple[int, str]:
    """(native thread id, its lines) of the first thread whose header line holds `marker`."""
    for section in dump.split("\nThread ")[1:]:
        header = section.splitlines()[0]
        if marker in header:
            return int(header.split()[0], 0), section
    raise AssertionError(f"no thread {marker!r} in:\n{dump}")


class FrozenThread:
    """A debugger's stop of one thread: the rank's training thread (Ray Train runs the training
    function in a thread of its own) is held in ptrace-stop while the process's other threads,
    the heartbeat among them, run on. It is taken at a moment the thread reads its next batch or
    runs its forward pass, without holding the GIL (checked with py-spy) and while the heartbeat
    thread still runs (checked from /proc: freezing a thread inside the interpreter's own locks
    would stop every thread), else let go and retried: the rank then never joins the step's
    gradient all-reduce, which the other rank waits in, and it keeps beating."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.tid, _ = thread_section(py_spy_dump(pid), '"TrainingThread')
        self.frozen_at = 0.0
        self._libc = ctypes.CDLL(None, use_errno=True)
        self._libc.ptrace.argtypes = [
            ctypes.c_long,
            ctypes.c_long,
            ctypes.c_void_p,
            ctypes.c_void_p,
        ]

    def freeze_before_the_all_reduce(self, attempts: int = 300) -> str:
        """Returns py-spy's view of the frozen rank."""
        for _ in range(attempts):
            assert psutil.pid_exists(self.pid), f"rank {self.pid} ended before it was caught"
            self._ptrace(PTRACE_SEIZE)
            self._ptrace(PTRACE_INTERRUPT)
            os.waitpid(self.tid, WALL)
            self.frozen_at = time.monotonic()
            dump = py_spy_dump(self.pid)
            _, section = thread_section(dump, f"{self.tid} ")
            if "gil" not in section.splitlines()[0] and BEFORE_THE_ALL_REDUCE.search(section):
                beating, _ = thread_section(dump, '"ftlaunch-heartbeat"')
                if self._still_beats(beating):
                    return dump
            self.release()
            time.sleep(random.uniform(0.01, 0.05))
        raise AssertionError(f"rank {self.pid} never caught before its all-reduce without the GIL")

    def _still_beats(self, tid: int) -> bool:
        """Whether the heartbeat thread goes on: it wakes a few times a second (its 1 s sleep,
        its call to the node agent). A thread blocked on a lock the frozen one holds never wakes;
        one waiting for the GIL wakes every 5 ms."""
        status = Path(f"/proc/{self.pid}/task/{tid}/status")

        def switches() -> int:
            line = next(x for x in status.read_text().splitlines() if x.startswith("voluntary"))
            return int(line.split()[1])

        before = switches()
        time.sleep(2.5)
        return 2 <= switches() - before <= 100

    def release(self) -> None:
        with contextlib.suppress(OSError):
            self._ptrace(PTRACE_DETACH)

    def _ptrace(self, request: int) -> None:
        if self._libc.ptrace(request, self.tid, None, None) != 0:
            errno = ctypes.get_errno()
            raise OSError(errno, f"ptrace({request:#x}, {self.tid}): {os.strerror(errno)}")


@pytest.mark.timeout(420)
def test_a_stopped_rank_then_a_stuck_rank_are_named_with_stacks_and_the_run_recovers(
    tmp_path: Path, tiny_bert: Path, keyword_data: dict
) -> None:
    out = tmp_path / "out"
    args = run_args(
        keyword_data,
        out,
        epochs=16,  # 128 steps: time to catch rank 1 before its all-reduce after the restart
        log_every=4,
        checkpoint_every=8,
        heartbeat_timeout_s=10,
        stall_timeout_s=15,
        max_failures=2,
    )
    run = launch(job_file(tmp_path, tiny_bert), args)
    try:
        wait_for(
            "a checkpoint", lambda: list((out / "checkpoints").glob("step-*/COMPLETE")), run, 240
        )
        stopped = rank_pids(out)[1]
        os.kill(stopped, signal.SIGSTOP)
        started = time.monotonic()
        (silent,) = wait_for("a stall", lambda: events(out, "stalled"), run, 10 + 15)
        silent_s = time.monotonic() - started
        assert silent["ranks"] == [1] and silent["pids"] == [stopped], silent
        assert silent["reason"] == "silent" and silent["for_s"] >= 10
        stacks = Path(silent["stacks"])
        assert stacks == out / "stacks" / "attempt-1"
        for rank in (0, 1):
            text = (stacks / f"rank-{rank}.txt").read_text()
            assert "# collected by py-spy" in text and "train_epochs" in text, text[:2000]
        assert "(stalled)" in (stacks / "rank-1.txt").read_text().splitlines()[0]
        wait_for("the stopped rank killed", lambda: not psutil.pid_exists(stopped), run, 15)

        def restarted_and_training() -> int | None:
            pid = rank_pids(out).get(1)
            resumed = events(out, "resumed")
            later = [r for r in events(out, "train") if resumed and r["step"] > resumed[-1]["step"]]
            return pid if pid != stopped and later else None

        slept = wait_for("a restart", restarted_and_training, run, 120)
        frozen = FrozenThread(slept)
        frozen.freeze_before_the_all_reduce()
        started = frozen.frozen_at
        stuck = wait_for("a second stall", lambda: events(out, "stalled")[1:], run, 15 + 15)[0]
        stuck_s = time.monotonic() - started
        assert stuck["ranks"] == [1] and stuck["pids"] == [slept], stuck
        assert stuck["reason"] == "stuck" and stuck["phase"] in ("data", "forward")
        assert BEFORE_THE_ALL_REDUCE.search(Path(stuck["stacks"], "rank-1.txt").read_text())

        stdout, stderr = run.communicate(timeout=240)
        assert run.returncode == 0, stdout[-3000:] + stderr[-3000:]
        assert stdout.count("stalled: rank 1 (") == 2
        summary = json.loads((out / "summary.json").read_text())
        assert summary["restarts"] == 2 and summary["steps"] == 128
        print(f"named silent after {silent_s:.1f} s, stuck after {stuck_s:.1f} s")
    finally:
        if "frozen" in locals():
            frozen.release()
        kill_run(run)


@pytest.mark.timeout(300)
def test_a_slowed_rank_is_a_straggler_and_a_killed_launcher_leaves_nothing(
    tmp_path: Path, tiny_bert: Path, keyword_data: dict
) -> None:
    out = tmp_path / "out"
    args = run_args(keyword_data, out, epochs=100, log_every=4)
    run = launch(job_file(tmp_path, tiny_bert), args)
    done = threading.Event()
    slowed = None
    try:
        wait_for("training", lambda: events(out, "train"), run, 240)
        slowed = rank_pids(out)[1]

        def duty_cycle() -> None:  # stopped half the time, in 40 ms slices
            while not done.is_set():
                os.kill(slowed, signal.SIGSTOP)
                time.sleep(0.04)
                os.kill(slowed, signal.SIGCONT)
                time.sleep(0.04)

        threading.Thread(target=duty_cycle, daemon=True).start()
        flagged = wait_for(
            "a straggler",
            lambda: [r for r in events(out, "train") if r.get("straggler") is not None],
            run,
            60,
        )
        done.set()
        assert flagged[0]["straggler"] == 1, flagged[0]
        busy = flagged[0]["rank_busy_s"]
        assert busy[1] > busy[0], busy

        processes = run_processes(run.pid)
        assert len(processes) > 5, processes  # Ray's GCS, raylet, workers, actors...
        os.kill(run.pid, signal.SIGKILL)
        killed = time.monotonic()
        while alive(processes) and time.monotonic() - killed < 30:
            time.sleep(0.2)
        left = [f"{p.pid} {p.name()}" for p in alive(processes)]
        assert not left, left
        print(
            f"all {len(processes)} processes gone {time.monotonic() - killed:.1f} s after SIGKILL"
        )
    finally:
        done.set()
        if slowed is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(slowed, signal.SIGCONT)
        kill_run(run)


@pytest.mark.timeout(300)
def test_a_second_run_on_one_output_dir_is_refused_and_ctrl_c_checkpoints_and_exits_3(
    tmp_path: Path, tiny_bert: Path, keyword_data: dict
) -> None:
    from trainer.formats.checkpoints import CheckpointStore

    out = tmp_path / "out"
    args = run_args(keyword_data, out, epochs=100, log_every=4, checkpoint_every=8)
    args += ["--set", "output.keep_last=100"]  # nothing pruned: every checkpoint must survive
    job = job_file(tmp_path, tiny_bert)
    first = launch(job, args)
    try:
        committed = wait_for(
            "a checkpoint",
            lambda: sorted((out / "checkpoints").glob("step-*/COMPLETE")),
            run=first,
            timeout=240,
        )
        run_id = next(out.glob(".run-*")).name.removeprefix(".run-")
        second = launch(job, args)
        _, stderr = second.communicate(timeout=120)
        assert second.returncode == 2, stderr[-3000:]
        (line,) = stderr.strip().splitlines()
        assert line.startswith(
            f"error: output.dir: {out} is in use by run {run_id} (pid {first.pid} on "
        )
        assert first.poll() is None  # the first goes on
        store = CheckpointStore(out / "checkpoints")
        for marker in committed:
            store.verify(marker.parent.name)

        processes = run_processes(first.pid)
        os.killpg(first.pid, signal.SIGINT)  # a terminal's Ctrl-C: the whole foreground group
        _, stderr = first.communicate(timeout=120)
        assert first.returncode == 3, stderr[-3000:]
        (line,) = stderr.strip().splitlines()
        assert line.startswith("error: preempted (SIGINT): checkpoint step-") and "--resume" in line
        tag = line.split("checkpoint ")[1].split(" ")[0]
        store.verify(tag)
        for marker in committed:
            store.verify(marker.parent.name)
        deadline = time.monotonic() + 30
        while alive(processes) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not alive(processes), [p.pid for p in alive(processes)]
        assert not (out / ".lock").exists()
    finally:
        kill_run(first)


@pytest.mark.timeout(300)
def test_a_disk_that_fills_during_a_save_fails_the_commit_and_keeps_the_previous_checkpoint(
    tmp_path: Path, tiny_bert: Path, keyword_data: dict
) -> None:
    """output.dir is a 24 MB tmpfs in a private mount namespace: the first checkpoint (16 MB:
    no best weights yet) fits, the second does not. What the run left is copied out before the
    namespace goes."""
    from launcher.resume import choose_resume_tag
    from trainer.formats.signing import CheckpointSigning, default_key_file

    out, kept = tmp_path / "out", tmp_path / "kept"
    out.mkdir()
    args = run_args(keyword_data, out, epochs=12, log_every=4, checkpoint_every=8, max_failures=0)
    command = " ".join(
        [sys.executable, "-m", "launcher.cli", "run", str(job_file(tmp_path, tiny_bert))]
        + [f"'{a}'" for a in args]
    )
    script = (
        f"mount -t tmpfs -o size=24m tmpfs {out} && {{ {command}; rc=$?; "
        f"df -k {out} | tail -1 > {tmp_path}/df; cp -a {out} {kept}; exit $rc; }}"
    )
    run = subprocess.Popen(
        ["unshare", "-m", "sh", "-c", script],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, stderr = run.communicate(timeout=240)
    finally:
        kill_run(run)
    assert run.returncode == 1, stdout[-3000:] + stderr[-3000:]
    (line,) = stderr.strip().splitlines()
    assert line.startswith("error: training failed: checkpoint step-16 was not committed: "), line
    recs = [
        json.loads(x) for p in kept.glob(".run-*/metrics.jsonl") for x in p.read_text().splitlines()
    ]
    failed = [r for r in recs if r["event"] == "commit_failed"]
    assert [r["tag"] for r in failed] == ["step-16"], failed
    assert [r["tag"] for r in recs if r["event"] == "committed"] == ["step-8"]
    assert "commit failed: checkpoint step-16" in stdout
    fingerprint = json.loads((kept / "checkpoints" / "step-8" / "manifest.json").read_text())[
        "state"
    ]["config_fingerprint"]
    # What --resume runs (the manifest is signed for `out`, where the run wrote it).
    signing = CheckpointSigning(str(default_key_file()), str(out))
    assert choose_resume_tag(kept, True, fingerprint, keep_last=2, signing=signing) == "step-8"
    assert not list((kept / "checkpoints").glob(".tmp-*"))  # the failed save's files are gone
