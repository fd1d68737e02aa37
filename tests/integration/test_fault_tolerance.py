"""Checkpoints on the head, exact resume after a worker is killed, and checkpoint integrity.

A worker process is killed with SIGKILL mid-epoch; Ray Train restarts the group, which resumes
from the newest complete checkpoint on the head. The samples seen after the restart must be
exactly those an uninterrupted run saw from that checkpoint on, and the final model must match.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT

pytestmark = [pytest.mark.ray, pytest.mark.dist]


def job_args(data: dict[str, Path], out: Path, stage: int) -> list[str]:
    sets = {
        "data.train": data["train"],
        "data.validation": data["validation"],
        "data.test": data["test"],
        "data.max_length": 32,
        "output.dir": out,
        "training.epochs": 12,  # 96 steps: enough for restarts mid-run, short for CI
        "training.micro_batch_size": 16,
        "training.eval_every": 64,
        "training.log_every": 8,
        "training.checkpoint_every": 16,
        "training.record_sample_ids": "true",
        "optim.lr": 0.002,
        "engine.zero_stage": stage,
        "output.keep_last": 2,
    }
    return [a for k, v in sets.items() for a in ("--set", f"{k}={v}")]


def launch(job: Path, args: list[str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "launcher.cli", "run", str(job), *args],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def train_workers(launcher_pid: int) -> list[int]:
    """PIDs of the Ray Train worker processes under this launcher (its embedded Ray), oldest
    first; other Ray clusters on the machine are not ours to touch."""
    import psutil

    try:
        descendants = psutil.Process(launcher_pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []
    workers = []
    for process in descendants:
        try:
            if "RayTrainWorker" in " ".join(process.cmdline()):
                workers.append(process)
        except psutil.Error:
            continue
    return [w.pid for w in sorted(workers, key=lambda w: w.create_time())]


def all_gone(pids: list[int]) -> bool:
    import psutil

    alive = []
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                alive.append(pid)
        except psutil.NoSuchProcess:
            continue
    return not alive


def records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def samples_by_step(recs: list[dict]) -> dict[int, list]:
    return {r["step"]: r["sample_ids"] for r in recs if r["event"] == "samples"}


def load_weights(model_dir: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(model_dir / "model.safetensors"))


@pytest.mark.timeout(600)
@pytest.mark.parametrize("stage", [2, 3])
def test_kill_9_a_worker_and_resume_exactly(
    tmp_path: Path, tiny_bert: Path, keyword_data: dict, stage: int
) -> None:
    job = tmp_path / "job.yaml"
    job.write_text(f"model: {{path: {tiny_bert}}}\ndata: {{train: x, validation: y, test: z}}\n")
    reference = launch(job, job_args(keyword_data, tmp_path / "reference", stage))
    assert reference.wait(timeout=300) == 0, reference.stderr.read()[-3000:]

    victim_out = tmp_path / "killed"
    run = launch(job, job_args(keyword_data, victim_out, stage))
    deadline = time.monotonic() + 240
    while not list((victim_out / "checkpoints").glob("step-*/COMPLETE")):
        assert time.monotonic() < deadline and run.poll() is None, "no checkpoint was committed"
        time.sleep(0.05)
    workers = train_workers(run.pid)
    assert len(workers) == 2, workers
    os.kill(workers[-1], signal.SIGKILL)
    stdout, stderr = run.communicate(timeout=300)
    assert run.returncode == 0, stdout[-2000:] + stderr[-3000:]

    summary = json.loads((victim_out / "summary.json").read_text())
    assert summary["restarts"] == 1
    recs = records(victim_out)
    resumed = [r for r in recs if r["event"] == "resumed"]
    assert len(resumed) == 1
    resume_step = resumed[0]["step"]
    after = [r for r in recs[recs.index(resumed[0]) :] if r["event"] == "samples"]
    expected = samples_by_step(records(tmp_path / "reference"))
    assert after and after[0]["step"] == resume_step + 1
    for record in after:  # exactly the samples of the uninterrupted run, step by step
        assert record["sample_ids"] == expected[record["step"]], record["step"]
    assert max(r["step"] for r in after) == max(expected)

    import torch

    killed, clean = (
        load_weights(victim_out / "model"),
        load_weights(tmp_path / "reference" / "model"),
    )
    for name, tensor in clean.items():
        torch.testing.assert_close(killed[name], tensor, rtol=1e-4, atol=1e-5, msg=name)


@pytest.mark.timeout(900)
def test_resume_refuses_a_corrupted_checkpoint_naming_the_file(
    tmp_path: Path, tiny_bert: Path, keyword_data: dict
) -> None:
    job = tmp_path / "job.yaml"
    job.write_text(f"model: {{path: {tiny_bert}}}\ndata: {{train: x, validation: y, test: z}}\n")
    out = tmp_path / "out"
    args = [*job_args(keyword_data, out, 2), "--set", "training.epochs=4"]
    first = launch(job, args)
    assert first.wait(timeout=400) == 0, first.stderr.read()[-2000:]
    newest = max((out / "checkpoints").glob("step-*"), key=lambda p: int(p.name.split("-")[1]))
    shard = newest / "ds" / "zero_pp_rank_1_mp_rank_00_optim_states.pt"
    raw = bytearray(shard.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    shard.write_bytes(bytes(raw))
    again = launch(job, [*args, "--resume"])
    _, stderr = again.communicate(timeout=120)
    assert again.returncode == 2, stderr[-2000:]
    (line,) = stderr.strip().splitlines()
    assert (
        line.startswith("error: --resume:") and "zero_pp_rank_1_mp_rank_00_optim_states.pt" in line
    )
    assert "does not match the checkpoint manifest" in line and "--resume-fallback" in line

    older = min((out / "checkpoints").glob("step-*"), key=lambda p: int(p.name.split("-")[1]))
    fallback = launch(job, [*args, "--resume-fallback"])
    _, stderr = fallback.communicate(timeout=400)
    assert fallback.returncode == 0, stderr[-3000:]
    assert f"skipping {newest.name}" in stderr and "zero_pp_rank_1" in stderr
    recs = records(out)
    assert [r["step"] for r in recs if r["event"] == "resumed"] == [int(older.name.split("-")[1])]


@pytest.mark.timeout(400)
def test_a_worker_killed_during_a_save_resumes_from_the_previous_complete_checkpoint(
    tmp_path: Path, tiny_bert: Path, keyword_data: dict
) -> None:
    job = tmp_path / "job.yaml"
    job.write_text(f"model: {{path: {tiny_bert}}}\ndata: {{train: x, validation: y, test: z}}\n")
    out = tmp_path / "out"
    run = launch(job, job_args(keyword_data, out, 2))
    checkpoints = out / "checkpoints"
    deadline = time.monotonic() + 240
    while not list(checkpoints.glob("step-*/COMPLETE")):
        assert time.monotonic() < deadline and run.poll() is None, "no checkpoint was committed"
        time.sleep(0.05)
    while not (partial := list(checkpoints.glob(".tmp-step-*"))):  # the next save begins
        assert time.monotonic() < deadline and run.poll() is None, "no second save started"
        time.sleep(0.002)
    workers = train_workers(run.pid)
    os.kill(workers[-1], signal.SIGKILL)
    interrupted = partial[0].name.removeprefix(".tmp-")
    committed = {p.parent.name for p in checkpoints.glob("step-*/COMPLETE")}
    stdout, stderr = run.communicate(timeout=300)
    assert run.returncode == 0, stdout[-2000:] + stderr[-3000:]

    recs = records(out)
    starts = [r for r in recs if r["event"] == "start"]
    resumed = [r for r in recs if r["event"] == "resumed"]
    assert len(starts) == 2 and len(resumed) == 1
    if interrupted not in committed:  # the kill landed inside the save (the usual case)
        assert starts[1]["discarded_partial"] == [f".tmp-{interrupted}"]
        assert resumed[0]["tag"] != interrupted
    assert resumed[0]["tag"] in committed  # only a checkpoint complete before the kill is used
    assert json.loads((out / "summary.json").read_text())["steps"] == 96
    assert not list(checkpoints.glob(".tmp-*"))


@pytest.mark.timeout(600)
def test_sigterm_commits_a_checkpoint_exits_3_and_resumes_on_1_or_3_workers(
    tmp_path: Path, tiny_bert: Path, keyword_data: dict
) -> None:
    job = tmp_path / "job.yaml"
    job.write_text(f"model: {{path: {tiny_bert}}}\ndata: {{train: x, validation: y, test: z}}\n")
    out = tmp_path / "out"
    args = [
        *job_args(keyword_data, out, 2),
        "--set",
        "training.checkpoint_every=1000",
        "--set",
        "training.preemption_grace_s=60",
        # 8 x 3 x 2 workers = 48 samples a step (5 steps an epoch, 40 in all): a batch that 1 and
        # 3 workers can keep, 4 cannot
        "--set",
        "training.epochs=8",
        "--set",
        "training.micro_batch_size=8",
        "--set",
        "training.grad_accum=3",
        "--set",
        "cluster.num_cpus=3",
    ]
    run = launch(job, args)
    deadline = time.monotonic() + 240
    while not any('"step": 24,' in p.read_text() for p in out.glob(".run-*/metrics.jsonl")):
        assert time.monotonic() < deadline and run.poll() is None, "training never got going"
        time.sleep(0.05)
    workers = train_workers(run.pid)
    assert len(workers) == 2, workers
    run.send_signal(signal.SIGTERM)
    _, stderr = run.communicate(timeout=90)
    assert run.returncode == 3, stderr[-3000:]
    (line,) = stderr.strip().splitlines()
    assert line.startswith("error: preempted (SIGTERM): checkpoint step-") and "--resume" in line
    tag = line.split("checkpoint ")[1].split(" ")[0]
    assert (out / "checkpoints" / tag / "COMPLETE").is_file()
    time.sleep(2)
    assert all_gone(workers)  # no stray worker processes
    assert not (out / "summary.json").exists()  # nothing was committed as a finished run

    # The preempted run resumes on other numbers of workers with the global batch of 48 kept: 4
    # cannot keep it and is refused before anything starts; 1 and 3 (from a copy) continue.
    refused = launch(job, [*args, "--resume", "--set", "cluster.num_workers=4"])
    _stdout, stderr = refused.communicate(timeout=120)
    assert refused.returncode == 2, stderr[-3000:]
    assert stderr.strip().splitlines() == [
        "error: training.grad_accum: the global batch of 48 samples cannot be kept on 4 workers: "
        "micro_batch_size 8 x 4 workers = 32 does not divide it (grad_accum would be 1.5); "
        "the checkpoint was written with micro_batch_size 8 x grad_accum 3 x 2 workers"
    ]
    assert (out / "checkpoints" / tag / "COMPLETE").is_file()
    out3 = tmp_path / "out3"
    shutil.copytree(out, out3)
    step = int(tag.split("-")[1])
    for target, workers, grad_accum in ((out, 1, 6), (out3, 3, 2)):
        overrides = ["--set", f"output.dir={target}", "--set", f"cluster.num_workers={workers}"]
        resumed = launch(job, [*args, *overrides, "--resume"])
        stdout, stderr = resumed.communicate(timeout=300)
        assert resumed.returncode == 0, stderr[-3000:]
        note = f"training.grad_accum 3 -> {grad_accum} on {workers} workers"
        assert note in " ".join(stdout.split())
        _check_resumed_on(
            target, step, {"step": step, "from": 2, "to": workers, "grad_accum": grad_accum}
        )


def _check_resumed_on(out: Path, step: int, change: dict[str, int]) -> None:
    """The resume is recorded (metrics.jsonl, summary.json), and across the stop and the resume
    every epoch consumed 240 distinct training rows (5 steps of 48; 16 of 256 dropped)."""
    recs = records(out)
    assert [r["step"] for r in recs if r["event"] == "resumed"] == [step]
    assert [r for r in recs if r["event"] == "world_size"] == [{"event": "world_size", **change}]
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["steps"], summary["world_size"]) == (40, change["to"])
    assert summary["world_size_changes"] == [change]
    epochs: dict[int, list[int]] = {}
    for r in recs:
        if r["event"] == "samples":
            ids = (i for rank_ids in r["sample_ids"] for i in rank_ids)
            epochs.setdefault((r["step"] - 1) // 5, []).extend(ids)
    assert sorted(epochs) == list(range(8))
    assert all(len(ids) == len(set(ids)) == 240 for ids in epochs.values())
