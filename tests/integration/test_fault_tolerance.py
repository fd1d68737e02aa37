"""Checkpoints on the head, exact resume after a worker is killed, and checkpoint integrity.

A worker process is killed with SIGKILL mid-epoch; Ray Train restarts the group, which resumes
from the newest complete checkpoint on the head. The samples seen after the restart must be
exactly those an uninterrupted run saw from that checkpoint on, and the final weights (the last
checkpoint's) must match the uninterrupted run's. The uninterrupted runs are shared by every test
that compares with one (`uninterrupted`), and every launched run is stopped by process group,
whatever the test's outcome (`launched`).

The job is `tests/integration/runs.py:job_args`: 8 steps per epoch, 48 steps, a checkpoint every
12 (12 and 36 in the middle of an epoch).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
from pathlib import Path

import pytest

from tests.integration.runs import (
    CHECKPOINT_EVERY,
    STEPS_PER_EPOCH,
    TOTAL_STEPS,
    Launched,
    job_args,
    launched,
    live_records,
    rank_pid,
    records,
    wait_for,
    write_job,
)

pytestmark = [pytest.mark.ray, pytest.mark.dist]


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


def samples_by_step(recs: list[dict]) -> dict[int, list]:
    return {r["step"]: r["sample_ids"] for r in recs if r["event"] == "samples"}


def final_weights(out: Path) -> dict:
    """The weights after the last step, from the last checkpoint (not the best-validation
    snapshot that model/ holds), read the way `ftlaunch export` reads them."""
    from trainer.export.readers import engine_tensors

    tensors = engine_tensors(out / "checkpoints" / f"step-{TOTAL_STEPS}")
    return {name: produce().clone() for name, (_, produce) in tensors.items()}


def assert_same_final_weights(out: Path, reference: Path, base_model: Path) -> None:
    """Equal to the uninterrupted run's at atol 1e-5 (an independent reference), and far from the
    base model's (training moved them, so equality is not trivially true)."""
    import torch
    from safetensors.torch import load_file

    got, expected = final_weights(out), final_weights(reference)
    assert got.keys() == expected.keys()
    for name, tensor in expected.items():
        torch.testing.assert_close(got[name], tensor, rtol=0, atol=1e-5, msg=name)
    base = load_file(str(base_model / "model.safetensors"))
    moved = [
        float((expected[f"bert.{name}"] - tensor).abs().max())
        for name, tensor in base.items()
        if f"bert.{name}" in expected
    ]
    assert len(moved) > 10 and min(moved) > 0 and max(moved) > 1e-2, moved


@pytest.mark.timeout(900)
def test_kill_9_a_worker_mid_epoch_and_resume_exactly(
    tmp_path: Path, tiny_bert: Path, keyword_data: dict, uninterrupted
) -> None:
    # ZeRO-2 only: the kill and the restart do not depend on the stage, and ZeRO-3's partitioned
    # state loading bit-exact is tests/integration/test_elastic_resume.py's (135 s of CI saved).
    reference = uninterrupted(2).out
    out = tmp_path / "killed"
    job = write_job(tmp_path, tiny_bert)
    with launched(job, job_args(keyword_data, out, 2), tmp_path / "logs") as run:
        first = f"step-{CHECKPOINT_EVERY}"  # 1.5 epochs in: a mid-epoch checkpoint
        wait_for(lambda: (out / "checkpoints" / first / "COMPLETE").is_file(), run, 300,
                 f"{first} committed", poll_s=0.02)  # fmt: skip
        os.kill(rank_pid(out, run, rank=1), signal.SIGKILL)
        assert run.wait(timeout=400) == 0, run.tail()

    recs = records(out)
    assert json.loads((out / "summary.json").read_text())["restarts"] == 1
    (resumed,) = [r for r in recs if r["event"] == "resumed"]
    resume_step = resumed["step"]
    assert resume_step % STEPS_PER_EPOCH, f"resumed at an epoch boundary ({resume_step})"
    after = [r for r in recs[recs.index(resumed) :] if r["event"] == "samples"]
    expected = samples_by_step(records(reference))
    assert after and after[0]["step"] == resume_step + 1
    for record in after:  # exactly the samples of the uninterrupted run, step by step
        assert record["sample_ids"] == expected[record["step"]], record["step"]
    assert max(r["step"] for r in after) == max(expected) == TOTAL_STEPS
    assert_same_final_weights(out, reference, tiny_bert)


def poison(checkpoint: Path, marker: Path) -> Path:
    """Replace rank 0's model states with a pickle that runs `touch MARKER` when loaded, and
    rewrite the manifest to match (what someone who can write the checkpoint could do)."""
    import hashlib
    import shlex

    import torch

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {shlex.quote(str(marker))}",))

    target = checkpoint / "ds" / "mp_rank_00_model_states.pt"
    torch.save({"module": {}, "payload": Payload()}, target)
    manifest = json.loads((checkpoint / "manifest.json").read_text())
    data = target.read_bytes()
    manifest["files"]["ds/mp_rank_00_model_states.pt"] = {
        "bytes": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
    }
    (checkpoint / "manifest.json").write_text(json.dumps(manifest, indent=1, sort_keys=True))
    return target


def one_error_line(run: Launched) -> str:
    lines = [ln for ln in run.stderr().strip().splitlines() if not ln.startswith("warning: ")]
    assert len(lines) == 1 and lines[0].startswith("error: "), run.tail()
    return lines[0]


@pytest.mark.timeout(900)
def test_resume_refuses_corrupted_and_poisoned_checkpoints_naming_the_file(
    tmp_path: Path, tiny_bert: Path, keyword_data: dict
) -> None:
    job = write_job(tmp_path, tiny_bert)
    out = tmp_path / "out"
    args = [*job_args(keyword_data, out, 2), "--set", "training.epochs=4"]  # checkpoints 12, 24
    with launched(job, args, tmp_path / "first") as first:
        assert first.wait(timeout=400) == 0, first.tail()
    newest, older = out / "checkpoints" / "step-24", out / "checkpoints" / "step-12"
    shard = newest / "ds" / "zero_pp_rank_1_mp_rank_00_optim_states.pt"
    raw = bytearray(shard.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    shard.write_bytes(bytes(raw))
    with launched(job, [*args, "--resume"], tmp_path / "corrupted") as again:
        assert again.wait(timeout=200) == 2, again.tail()
        line = one_error_line(again)
    assert line.startswith("error: --resume:") and shard.name in line
    assert "does not match the checkpoint manifest" in line and "--resume-fallback" in line

    with launched(job, [*args, "--resume-fallback"], tmp_path / "fallback") as fallback:
        assert fallback.wait(timeout=400) == 0, fallback.tail()
        assert f"skipping {newest.name}" in fallback.stderr() and shard.name in fallback.stderr()
    assert [r["step"] for r in records(out) if r["event"] == "resumed"] == [12]

    # A code-running pickle with a manifest rewritten to match: refused before anything loads
    # it (the manifest's signature does not verify), and again, by the loaders, when the user
    # vouches for the checkpoint; the planted command never runs.
    marker = tmp_path / "payload-ran"
    poison(newest, marker)
    with launched(job, [*args, "--resume"], tmp_path / "poisoned") as poisoned:
        assert poisoned.wait(timeout=200) == 2, poisoned.tail()
        line = one_error_line(poisoned)
    assert f"{newest}: its manifest is not signed for this output.dir" in line
    assert f"--trust-checkpoint {newest}" in line
    trusted = [*args, "--trust-checkpoint", str(newest), "--set", "training.max_failures=0"]
    with launched(job, trusted, tmp_path / "trusted") as vouched:
        assert vouched.wait(timeout=400) == 2, vouched.tail()
        line = one_error_line(vouched)
    assert "step-24/ds/mp_rank_00_model_states.pt: refers to posix.system" in line
    assert not marker.exists()
    assert older.is_dir()  # nothing already written was lost


@pytest.mark.timeout(900)
def test_a_worker_killed_during_a_save_resumes_from_the_previous_complete_checkpoint(
    tmp_path: Path, tiny_bert: Path, keyword_data: dict, uninterrupted
) -> None:
    """Rank 1 is killed the moment a save's staging directory appears, before it can deliver
    its part, so that save can never commit. The kill is proven to have landed inside the save
    window (the tag was not committed before the restart, whose start discarded its staging); a
    kill the scheduler delayed past the window is retried at the next save."""
    reference = uninterrupted(2).out
    out = tmp_path / "out"
    job = write_job(tmp_path, tiny_bert)
    checkpoints = out / "checkpoints"
    with launched(job, job_args(keyword_data, out, 2), tmp_path / "logs") as run:
        wait_for(lambda: list(checkpoints.glob("step-*/COMPLETE")), run, 300,
                 "first commit", poll_s=0.05)  # fmt: skip
        landed = None
        for kills in range(1, 4):
            victim = rank_pid(out, run, rank=1)  # before the save: no lookup in the window
            staging = wait_for(lambda: list(checkpoints.glob(".tmp-step-*")), run, 300,
                               "next save", poll_s=0.002)  # fmt: skip
            os.kill(victim, signal.SIGKILL)
            tag = staging[0].name.removeprefix(".tmp-")
            restarted = wait_for(
                lambda n=kills: [r for r in live_records(out) if r["event"] == "start"][n:],
                run, 300, "restart", poll_s=0.1,
            )  # fmt: skip
            before = live_records(out)
            before = before[: before.index(restarted[0])]
            if not any(r["event"] == "committed" and r["tag"] == tag for r in before):
                landed = (tag, restarted[0], before)
                break
        assert landed, "every kill missed its save window"
        assert run.wait(timeout=400) == 0, run.tail()

    tag, restart, before = landed
    # The save was cut and its staging dropped: by the head when the surviving rank reported its
    # failed save (commit_failed), or else by the restart (discarded_partial).
    if any(r["event"] == "commit_failed" and r["tag"] == tag for r in before):
        assert restart["discarded_partial"] == []
    else:
        assert restart["discarded_partial"] == [f".tmp-{tag}"]
    committed_before = [r["tag"] for r in before if r["event"] == "committed"]
    resumed = [r for r in records(out) if r["event"] == "resumed"]
    assert resumed[-1]["tag"] == committed_before[-1] != tag  # the previous complete checkpoint
    assert json.loads((out / "summary.json").read_text())["steps"] == TOTAL_STEPS
    assert not list(checkpoints.glob(".tmp-*"))
    assert_same_final_weights(out, reference, tiny_bert)


@pytest.mark.timeout(900)
def test_sigterm_commits_a_checkpoint_exits_3_and_resumes_on_1_or_3_workers(
    tmp_path: Path, tiny_bert: Path, keyword_data: dict
) -> None:
    job = write_job(tmp_path, tiny_bert)
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
    with launched(job, args, tmp_path / "first") as run:
        wait_for(lambda: any(r.get("step") == 24 for r in live_records(out)), run, 300,
                 "step 24", poll_s=0.05)  # fmt: skip
        workers = [rank_pid(out, run, rank) for rank in (0, 1)]
        run.send_signal(signal.SIGTERM)
        assert run.wait(timeout=90) == 3, run.tail()
        line = one_error_line(run)
        time.sleep(2)
        assert all_gone(workers)  # the launcher stopped its Ray itself: no stray worker
    assert line.startswith("error: preempted (SIGTERM): checkpoint step-") and "--resume" in line
    tag = line.split("checkpoint ")[1].split(" ")[0]
    assert (out / "checkpoints" / tag / "COMPLETE").is_file()
    assert not (out / "summary.json").exists()  # nothing was committed as a finished run

    # The preempted run resumes on other numbers of workers with the global batch of 48 kept: 4
    # cannot keep it and is refused before anything starts; 1 and 3 (from a copy) continue.
    refusal = [*args, "--resume", "--set", "cluster.num_workers=4"]
    with launched(job, refusal, tmp_path / "refused") as refused:
        assert refused.wait(timeout=120) == 2, refused.tail()
    assert refused.stderr().strip().splitlines() == [
        "error: training.grad_accum: the global batch of 48 samples cannot be kept on 4 workers: "
        "micro_batch_size 8 x 4 workers = 32 does not divide it (grad_accum would be 1.5); "
        "the checkpoint was written with micro_batch_size 8 x grad_accum 3 x 2 workers"
    ]
    assert (out / "checkpoints" / tag / "COMPLETE").is_file()
    out3 = tmp_path / "out3"
    shutil.copytree(out, out3)
    step = int(tag.split("-")[1])
    # The copy's manifest is signed for `out`, not `out3`: resuming it takes the user's word.
    trust = ["--trust-checkpoint", str(out3 / "checkpoints" / tag)]
    for target, workers, grad_accum, how in ((out, 1, 6, ["--resume"]), (out3, 3, 2, trust)):
        overrides = ["--set", f"output.dir={target}", "--set", f"cluster.num_workers={workers}"]
        with launched(job, [*args, *overrides, *how], tmp_path / f"on{workers}") as resumed:
            assert resumed.wait(timeout=300) == 0, resumed.tail()
        note = f"training.grad_accum 3 -> {grad_accum} on {workers} workers"
        assert note in " ".join(resumed.stdout().split())
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
