"""`ftlaunch slurm` against a real SLURM: slurmctld + two slurmd on this machine (Debian's packages,
started by the session fixture below), sbatch jobs that boot Ray on both nodes and fine-tune the
tiny BERT with 2 DeepSpeed workers, one per node.

Checks: two jobs submitted at once both finish with results and use different ports and fresh
private job directories (a requeued start gets a new one), removed at the end, with a log only
the user can read; one of them, sent USR1 as before a time limit, checkpoints, requeues itself
and resumes; `scancel` during training leaves no process and no directory of the job (found by
the job's environment, not by name); a Ray head that misses --join-timeout fails the job with
one line and cleans up; the SLURM job helpers (and `status/logs/stop` for SLURM ids) know real
ids and refuse unknown ones.
"""

from __future__ import annotations

import io
import json
import math
import os
import re
import shutil
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cluster.slurm.jobs import SlurmError, cancel, job_log_path, job_state
from cluster.slurm.layout import user_root
from cluster.slurm.node import MARKER_ENV, reap
from launcher.errors import UserError
from launcher.slurm.jobs import slurm_logs, slurm_status, slurm_stop
from tests.fixtures import REPO_ROOT, ftlaunch

pytestmark = [pytest.mark.slurm, pytest.mark.ray, pytest.mark.dist]

SCRIPTS = REPO_ROOT / "tests" / "slurm"
NEEDED = ("slurmctld", "slurmd", "sbatch", "squeue", "scontrol", "scancel", "srun", "munged")
TERMINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY"}


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """slurmctld + slurmd n1, n2 (all on localhost); stopped by PID afterwards."""
    missing = [
        name for name in NEEDED if not shutil.which(name) and not Path(f"/usr/sbin/{name}").exists()
    ]
    if missing:
        pytest.skip(
            f"SLURM is not installed ({', '.join(missing)} missing): apt-get install slurmctld "
            "slurmd slurm-client munge (.ci/run does this when run as root)"
        )
    if os.geteuid() != 0:
        pytest.skip("the local SLURM cluster runs its daemons as root")
    if subprocess.run(["pgrep", "-x", "slurmctld"], capture_output=True).returncode == 0:
        pytest.fail("a slurmctld already runs on this machine; stop it before the SLURM tests")
    state = tmp_path_factory.mktemp("slurm-state")
    env = dict(os.environ, STATE_DIR=str(state), NNODES="2", AUTH="munge", CRED_EXPIRE="30")
    started = subprocess.run(
        ["bash", str(SCRIPTS / "start-local-slurm.sh")],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        nodes = subprocess.run(
            ["sinfo", "-h", "-N", "-o", "%N %t"], capture_output=True, text=True
        ).stdout
        assert sorted(nodes.split()) == ["idle", "idle", "n1", "n2"], nodes + started.stderr
        yield state
    finally:
        subprocess.run(["bash", str(SCRIPTS / "stop-local-slurm.sh")], env=env, timeout=60)


def write_job(tmp_path: Path, model: Path, data: dict[str, Path], name: str, epochs: int) -> Path:
    job = tmp_path / f"{name}.yaml"
    job.write_text(
        f"""
name: {name}
model: {{path: {model}}}
data: {{train: {data["train"]}, validation: {data["validation"]}, test: {data["test"]}, max_length: 32,
        cache_dir: {tmp_path / "cache"}}}
optim: {{lr: 0.002}}
training: {{epochs: {epochs}, micro_batch_size: 16, log_every: 4, eval_every: epoch}}
cluster: {{num_workers: 2}}
output: {{dir: {tmp_path / name}}}
"""
    )
    return job


def submit(job: Path, *extra: str) -> tuple[str, float]:
    submitted = time.time()
    result = ftlaunch("slurm", str(job), "--nodes", "2", "--time", "15", *extra, cwd=job.parent)
    assert result.returncode == 0, result.stdout + result.stderr
    match = re.search(r"submitted SLURM job (\d+)", result.stdout)
    assert match, result.stdout
    assert "tail -f" in result.stdout
    return match.group(1), submitted


def wait_terminal(job_id: str, timeout_s: float) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        state = job_state(job_id)
        if state in TERMINAL:
            return state
        time.sleep(1)
    raise TimeoutError(f"job {job_id} still {job_state(job_id)} after {timeout_s}s")


def event_time(log: str, event: str) -> float:
    match = re.search(rf"t=([\d.]+)\] {event}", log)
    assert match, f"no '{event}' line in the job log:\n{log[-3000:]}"
    return float(match.group(1))


def job_directories(job_id: str) -> list[Path]:
    """The job directory of every start of the job, as its log names them."""
    return [Path(d) for d in re.findall(r"job directory (\S+)", job_log_path(job_id).read_text())]


def processes_of_job(job_id: str) -> list[str]:
    """Every live process started for the job: SLURM puts SLURM_JOB_ID in all of them, and our
    Ray processes also carry the job directory in FTLAUNCH_SLURM_JOB_DIR."""
    needles = (
        f"SLURM_JOB_ID={job_id}\0".encode(),
        *(f"{MARKER_ENV}={d}\0".encode() for d in job_directories(job_id)),
    )
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes() + b"\0"
            if any(needle in environ for needle in needles):
                found.append(f"{entry.name}: {(entry / 'cmdline').read_bytes()[:120]!r}")
        except OSError:
            continue
    return found


def wait_for_training(out: Path, job_id: str, record: str = "train") -> None:
    """Until rank 0 has written a `record` event (the loop is running) in the live metrics."""
    deadline = time.monotonic() + 240
    while not any(
        f'"event": "{record}"' in p.read_text() for p in out.glob(".run-*/metrics.jsonl")
    ):
        assert time.monotonic() < deadline, job_log_path(job_id).read_text()[-3000:]
        assert job_state(job_id) in ("PENDING", "CONFIGURING", "RUNNING"), job_state(job_id)
        time.sleep(0.2)


@pytest.mark.timeout(540)
def test_two_jobs_at_once_fine_tune_on_two_nodes_without_colliding_and_usr1_requeues_one(
    slurm_cluster: Path, tmp_path: Path, tiny_bert: Path, keyword_data: dict[str, Path]
) -> None:
    epochs = {"a": 2, "b": 8}  # b: long enough (64 steps) that USR1 lands mid-training
    jobs = {
        name: write_job(tmp_path, tiny_bert, keyword_data, name, n) for name, n in epochs.items()
    }
    submitted = [submit(jobs["a"]), submit(jobs["b"], "--requeue")]
    # USR1 is what SLURM sends before the time limit (--signal=B:USR1@grace): job b commits a
    # checkpoint, requeues itself, and its restart resumes from that checkpoint.
    b_id = submitted[1][0]
    wait_for_training(tmp_path / "b", b_id)
    subprocess.run(["scancel", "--signal=USR1", "--batch", b_id], check=True, timeout=30)
    for job_id, _ in submitted:
        assert wait_terminal(job_id, 420) == "COMPLETED", job_log_path(job_id).read_text()[-4000:]

    logs = [job_log_path(job_id).read_text() for job_id, _ in submitted]
    ports, job_dirs = [], []
    for (job_id, sent), log, name in zip(submitted, logs, ("a", "b"), strict=True):
        out = tmp_path / name
        summary = json.loads((out / "summary.json").read_text())
        assert summary["steps"] == 8 * epochs[name]  # 256 rows / (16 x 2 workers) per epoch
        records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        losses = [r["loss"] for r in records if r.get("event") == "train"]
        assert len(losses) >= 2 and all(math.isfinite(loss) for loss in losses)
        assert (out / "model" / "config.json").is_file()
        (script,) = out.glob("slurm/*/job.sbatch")  # kept for audit, with the resolved config
        assert "#SBATCH --nodes=2" in script.read_text()
        assert (script.parent / "config.yaml").is_file()
        assert "node 0 (head)" in log and "node 1 (worker)" in log
        assert "all 2 Ray nodes joined" in log and "ftlaunch run exited with 0" in log
        ports.append(set(re.findall(r"ports (\d+)-(\d+)", log)))
        job_dirs.append(set(job_directories(job_id)))
        boot_s = event_time(log, "all 2 Ray nodes joined") - sent
        print(f"job {job_id}: sbatch -> all 2 Ray nodes joined in {boot_s:.1f} s")
        assert all(d.parent == user_root(os.getuid()) for d in job_dirs[-1])
        assert not any(d.exists() for d in job_dirs[-1])  # token and Ray temp dirs are gone
        assert stat.S_IMODE(job_log_path(job_id).stat().st_mode) == 0o600  # umask 077
        assert processes_of_job(job_id) == []
    b_log = logs[1]
    assert "USR1" in b_log and "ftlaunch run exited with 3" in b_log and "requeueing" in b_log
    assert f"job {b_id} started (restart 1)" in b_log and "--resume" in b_log
    b_records = [
        json.loads(line) for line in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()
    ]
    (resumed,) = [r for r in b_records if r.get("event") == "resumed"]
    assert 0 < resumed["step"] < 8 * epochs["b"]
    assert len(ports[0]) == 2 and len(ports[1]) >= 2 and not ports[0] & ports[1]
    assert len(job_dirs[0]) == 1 and len(job_dirs[1]) == 2  # b's requeued start: a fresh one
    assert not job_dirs[0] & job_dirs[1]


@pytest.mark.timeout(300)
def test_scancel_during_training_leaves_no_process_of_the_job(
    slurm_cluster: Path, tmp_path: Path, tiny_bert: Path, keyword_data: dict[str, Path]
) -> None:
    job = write_job(tmp_path, tiny_bert, keyword_data, "c", epochs=50)
    job_id, _ = submit(job)
    wait_for_training(tmp_path / "c", job_id, record="start")
    alive = processes_of_job(job_id)  # the check below does see the job's processes
    assert any("ray::" in line for line in alive), alive  # Ray workers among them
    cancel(job_id)
    assert wait_terminal(job_id, 60) == "CANCELLED"
    deadline = time.monotonic() + 15  # slurmstepd and our reaper finish within KillWait (5 s)
    while processes_of_job(job_id) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert processes_of_job(job_id) == [], job_log_path(job_id).read_text()[-3000:]
    (directory,) = job_directories(job_id)
    assert not directory.exists()  # removed on every node, token first
    assert not (tmp_path / "c" / "summary.json").exists()


@pytest.mark.timeout(120)
def test_a_cluster_that_does_not_come_up_in_time_fails_the_job_with_one_line_and_cleans_up(
    slurm_cluster: Path, tmp_path: Path, tiny_bert: Path, keyword_data: dict[str, Path]
) -> None:
    job = write_job(tmp_path, tiny_bert, keyword_data, "d", epochs=1)
    job_id, _ = submit(job, "--join-timeout", "1")  # Ray needs seconds to start, never 1
    assert wait_terminal(job_id, 90) == "FAILED"
    log = job_log_path(job_id).read_text()
    errors = [line for line in log.splitlines() if line.startswith("error:")]
    assert errors == ["error: the Ray head did not start on n1 within 1 s; see the lines above"]
    assert "Ray torn down; exit 1" in log and "ftlaunch run exited" not in log
    deadline = time.monotonic() + 15
    while processes_of_job(job_id) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert processes_of_job(job_id) == []
    (directory,) = job_directories(job_id)
    assert not directory.exists()


@pytest.mark.timeout(60)
def test_job_helpers_know_real_ids_and_refuse_unknown_ones(
    slurm_cluster: Path, tmp_path: Path
) -> None:
    script = tmp_path / "hello.sh"
    script.write_text(f"#!/bin/bash\n#SBATCH --output={tmp_path}/hello-%j.out\necho hello\n")
    out = subprocess.run(
        ["sbatch", "--parsable", str(script)], capture_output=True, text=True, check=True
    )
    job_id = out.stdout.strip()
    assert wait_terminal(job_id, 30) == "COMPLETED"
    assert job_log_path(job_id) == tmp_path / f"hello-{job_id}.out"
    assert job_log_path(job_id).read_text() == "hello\n"
    cancel(job_id)  # finished: nothing to do, no error
    for call in (job_state, job_log_path, cancel):
        with pytest.raises(SlurmError, match=r"^job 999999: no such SLURM job"):
            call("999999")
    with pytest.raises(SlurmError, match="not a SLURM job id"):
        job_state("raysubmit_abc")

    # What `ftlaunch status/logs/stop ID` print for a SLURM id.
    assert (
        slurm_status(job_id)
        == f"SLURM job {job_id}: COMPLETED (log: {tmp_path}/hello-{job_id}.out)"
    )
    buffer = io.StringIO()
    slurm_logs(job_id, follow=True, out=buffer)  # returns: the job has ended
    assert buffer.getvalue() == "hello\n"
    for command in (slurm_status, slurm_stop):
        with pytest.raises(UserError, match=r"^job 999999: no such SLURM job"):
            command("999999")


@pytest.mark.timeout(30)
def test_reap_kills_the_jobs_detached_processes_and_nothing_else(tmp_path: Path) -> None:
    """What a node does after stopping `ray start`: KILL whatever of its job detached (setsid),
    found by the marker in its environment, and leave every other process alone."""
    mine, other = tmp_path / "ftl-slurm-7", tmp_path / "ftl-slurm-70"
    sleepers = {
        name: subprocess.Popen(
            ["sleep", "60"], env=dict(os.environ, **{MARKER_ENV: str(d)}), start_new_session=True
        )
        for name, d in (("mine", mine), ("other", other))
    }
    unmarked = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        assert reap(mine) == 1
        assert sleepers["mine"].wait(timeout=5) == -9
        assert sleepers["other"].poll() is None and unmarked.poll() is None
        assert reap(mine) == 0
    finally:
        for process in (*sleepers.values(), unmarked):
            process.kill()
            process.wait()
