"""Pure head-side pieces: placement fit, the collector's file reassembly, run-dir commits."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from cluster.head.collector import RunCollector
from cluster.placement.fit import max_placeable_workers, placement_problem
from launcher.rundir import commit_run, create_staging


def test_workers_fit_per_node_not_just_in_total() -> None:
    nodes = [{"CPU": 3.0}, {"CPU": 3.0}]
    assert max_placeable_workers({"CPU": 2.0}, nodes) == 2  # 6 CPUs in total, but 1 worker per node
    assert placement_problem(2, {"CPU": 2.0}, nodes) is None
    problem = placement_problem(3, {"CPU": 2.0}, nodes)
    assert problem == (
        "cluster.num_workers: needs 3 workers x 2 CPU; the cluster has 2 node(s) with 6 CPU in total "
        "and can place at most 2"
    )


def test_gpu_requests_count_gpus() -> None:
    nodes = [{"CPU": 16.0, "GPU": 1.0}, {"CPU": 16.0}]
    problem = placement_problem(4, {"CPU": 1.0, "GPU": 1.0}, nodes)
    assert (
        problem is not None
        and "needs 4 workers x 1 CPU + 1 GPU" in problem
        and "1 GPU in total" in problem
    )


def test_zero_resources_are_ignored_and_fractions_work() -> None:
    assert max_placeable_workers({"CPU": 0.5, "GPU": 0.0}, [{"CPU": 2.0}]) == 4


def test_collector_reassembles_chunked_files_and_verifies_them(tmp_path: Path) -> None:
    collector = RunCollector(str(tmp_path))
    payload = bytes(range(256)) * 1000
    handle = collector.begin_file("model/weights.bin")
    for start in range(0, len(payload), 4096):
        collector.write_chunk(handle, payload[start : start + 4096])
    assert not (tmp_path / "model" / "weights.bin").exists()  # invisible until complete
    collector.end_file(handle, hashlib.sha256(payload).hexdigest())
    assert (tmp_path / "model" / "weights.bin").read_bytes() == payload

    bad = collector.begin_file("model/other.bin")
    collector.write_chunk(bad, b"abc")
    with pytest.raises(OSError, match="sha256 mismatch"):
        collector.end_file(bad, hashlib.sha256(b"abd").hexdigest())
    assert sorted(p.name for p in (tmp_path / "model").iterdir()) == ["weights.bin"]


def test_collector_refuses_names_outside_the_run_dir(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="escapes"):
        RunCollector(str(tmp_path / "run")).begin_file("../../etc/passwd")


def test_collector_appends_metrics_and_drains_each_record_once(tmp_path: Path) -> None:
    collector = RunCollector(str(tmp_path))
    collector.report({"event": "train", "step": 1})
    collector.report({"event": "eval", "step": 1})
    assert [r["event"] for r in collector.drain()] == ["train", "eval"]
    assert collector.drain() == []
    collector.close()
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["event"] for line in lines] == ["train", "eval"]


def test_commit_replaces_earlier_results_only_at_the_end(tmp_path: Path) -> None:
    out = tmp_path / "out"
    (out / "model").mkdir(parents=True)
    (out / "model" / "old.bin").write_text("old")
    (out / "summary.json").write_text("{}")
    (out / "notes.txt").write_text("user file")
    staging = create_staging(out, "r1")
    (staging / "model").mkdir()
    (staging / "model" / "new.bin").write_text("new")
    (staging / "summary.json").write_text('{"ok": 1}')
    assert (out / "model" / "old.bin").exists()  # untouched while the run is in progress
    commit_run(staging, out)
    assert sorted(p.name for p in (out / "model").iterdir()) == ["new.bin"]
    assert json.loads((out / "summary.json").read_text()) == {"ok": 1}
    assert (out / "notes.txt").read_text() == "user file"
    assert not staging.exists() and not list(out.glob(".*.old-*"))


def test_the_head_commits_a_checkpoint_once_every_rank_delivered_it(tmp_path: Path) -> None:
    collector = RunCollector(str(tmp_path / "run"), str(tmp_path / "ckpt"))
    staging = Path(collector.checkpoint_staging("step-4"))  # rank 0 is on the head
    (staging / "rank0.bin").write_bytes(b"zero")
    payload = b"one" * 1000  # rank 1 streams its file
    handle = collector.begin_checkpoint_file("step-4", "rank1.bin")
    collector.write_chunk(handle, payload)
    collector.end_file(handle, hashlib.sha256(payload).hexdigest())

    collector.checkpoint_submitted("step-4", 1, None)
    assert not collector.checkpoint_is_committed("step-4")  # rank 0's part not announced yet
    collector.checkpoint_submitted("step-4", 0, {"step": 4, "world_size": 2})
    assert collector.checkpoint_is_committed("step-4")
    manifest = json.loads((tmp_path / "ckpt" / "step-4" / "manifest.json").read_text())
    assert manifest["files"]["rank1.bin"]["sha256"] == hashlib.sha256(payload).hexdigest()
    assert manifest["files"]["rank0.bin"]["sha256"] == hashlib.sha256(b"zero").hexdigest()
    assert [r["event"] for r in collector.drain()] == ["committed"]


def test_a_restarted_worker_group_drops_what_a_crashed_save_left(tmp_path: Path) -> None:
    collector = RunCollector(str(tmp_path / "run"), str(tmp_path / "ckpt"))
    collector.report({"event": "start", "world_size": 2})
    staging = Path(collector.checkpoint_staging("step-8"))
    (staging / "half.bin").write_bytes(b"x")
    collector.checkpoint_submitted("step-8", 1, None)  # then rank 0 died
    collector.report({"event": "start", "world_size": 2})
    assert not staging.exists()
    restart = [r for r in collector.drain() if r["event"] == "start"][-1]
    assert restart["attempt"] == 2 and restart["discarded_partial"] == [".tmp-step-8"]
    collector.checkpoint_submitted("step-8", 0, {"step": 8, "world_size": 2})
    assert not collector.checkpoint_is_committed("step-8")  # rank 1's old delivery does not count
