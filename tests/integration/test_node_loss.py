"""Losing a node of an elastic job: the run continues on the workers that can still be placed.

Two Ray nodes of 1 CPU each (the second in a private mount namespace: nothing on the head's disk is
visible there), a job with `cluster.num_workers: {min: 1, max: 2}` and one worker per node. Once
the first (mid-epoch) checkpoint is committed, every process of the second node is SIGKILLed:
its raylet and the rank it hosted vanish at once, as when a spot instance is reclaimed. Ray Train
restarts the group on the one worker that still fits, the run resumes from that checkpoint with
grad_accum doubled (the global batch of 32 is kept), records the change, and across the loss every
training row of every epoch is consumed exactly once.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.integration.conftest import cluster_env, two_node_cluster
from tests.integration.runs import job_args, launched, live_records, records, wait_for, write_job

pytestmark = [pytest.mark.ray, pytest.mark.dist]

ROWS, STEPS_PER_EPOCH, EPOCHS, CHECKPOINT = 256, 8, 2, 12  # 2 x 16 = 32 rows a step


def lose_node(node: subprocess.Popen) -> None:
    """SIGKILL everything the node runs at once: `ray start`, its raylet (which leaves the
    process group) and the workers the raylet started, the rank among them."""
    import psutil

    processes = [psutil.Process(node.pid), *psutil.Process(node.pid).children(recursive=True)]
    assert any("raylet" in " ".join(p.cmdline()) for p in processes), "no raylet found"
    for process in processes:
        process.kill()
    psutil.wait_procs(processes, timeout=30)


@pytest.mark.timeout(600)
def test_an_elastic_run_loses_a_node_and_finishes_on_the_workers_left(
    tmp_path: Path, tiny_bert: Path, keyword_data: dict
) -> None:
    out = tmp_path / "out"
    sets = {
        "training.epochs": EPOCHS,
        "training.eval_every": 1000,
        "training.checkpoint_every": CHECKPOINT,
        "cluster.num_workers": "{min: 1, max: 2}",
        "cluster.num_cpus": 1,
    }
    args = [
        *job_args(keyword_data, out, 2),
        *(a for k, v in sets.items() for a in ("--set", f"{k}={v}")),
    ]
    with two_node_cluster(tmp_path) as (cluster, node):
        args += ["--address", cluster["address"]]
        job = write_job(tmp_path, tiny_bert)
        with launched(job, args, tmp_path / "logs", cluster_env(cluster)) as run:
            wait_for(lambda: (out / "checkpoints" / f"step-{CHECKPOINT}" / "COMPLETE").is_file(),
                     run, 300, f"step-{CHECKPOINT} committed", poll_s=0.05)  # fmt: skip
            starts = [r for r in live_records(out) if r["event"] == "rank_start"]
            assert sorted(r["rank"] for r in starts) == [0, 1], starts
            lose_node(node)
            assert run.wait(timeout=400) == 0, run.tail()

    recs = records(out)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["restarts"] == 1
    restarted = [r for r in recs if r["event"] == "rank_start"][2:]
    assert [(r["rank"], r["world_size"]) for r in restarted] == [(0, 1)], restarted
    (resumed,) = [r for r in recs if r["event"] == "resumed"]
    step = resumed["step"]
    assert step >= CHECKPOINT and step % STEPS_PER_EPOCH, f"resumed at {step}"
    change = {"step": step, "from": 2, "to": 1, "grad_accum": 2}
    assert [r for r in recs if r["event"] == "world_size"] == [{"event": "world_size", **change}]
    assert (summary["steps"], summary["world_size"]) == (EPOCHS * STEPS_PER_EPOCH, 1)
    assert summary["world_size_changes"] == [change]
    # Steps after the checkpoint ran twice (before the loss, and again after the resume): the
    # consumed rows are those of the steps up to the checkpoint, then everything after it.
    cut = recs.index(resumed)
    kept = [
        r for i, r in enumerate(recs) if r["event"] == "samples" and (i > cut or r["step"] <= step)
    ]
    assert sorted({r["step"] for r in kept}) == list(range(1, EPOCHS * STEPS_PER_EPOCH + 1))
    epochs: dict[int, list[int]] = {}
    for r in kept:  # one record a micro-batch: 2 a step on the one worker left
        epochs.setdefault((r["step"] - 1) // STEPS_PER_EPOCH, []).extend(
            i for rank_ids in r["sample_ids"] for i in rank_ids
        )
    assert sorted(epochs) == list(range(EPOCHS))
    assert all(len(ids) == len(set(ids)) == ROWS for ids in epochs.values()), {
        e: len(ids) for e, ids in epochs.items()
    }
