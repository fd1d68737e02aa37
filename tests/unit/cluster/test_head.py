"""The head's services without Ray: the collector's file reassembly and name confinement, the
metrics stream, checkpoint commits once every rank delivered, restarts, and the MLflow mirror."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import pytest

from cluster.auth.channel import key_from_token
from cluster.head.collector import RunCollector
from cluster.worker.stream import send_dir
from tests.unit.trainer.test_metrics import window
from trainer.formats.checkpoints import CheckpointStore, CorruptCheckpointError
from trainer.formats.durable import sha256_file
from trainer.formats.names import UnsafeNameError

TOKEN = "t" * 64


def report_sample_stream(collector: RunCollector) -> None:
    """Two gathered train windows, an evaluation and the summary, then the end of the run: what
    every tracker mirror is checked against."""
    times = [[1.0, 1.0], [1.0, 1.0]]
    collector.report(window(2, [0.1, 0.1], times) | {"loss": 0.9})
    collector.report(window(4, [0.1, 0.1], times) | {"loss": 0.4})
    collector.report({"event": "eval", "step": 4, "val_accuracy": 0.75})
    collector.report({"event": "summary", "steps": 4, "test": {"accuracy": 0.8}})
    collector.close()


def wait_for_outcome(collector: RunCollector, tag: str) -> tuple[str, str]:
    """Commits run on the committer's thread: the status a rank would get once it is known."""
    deadline = time.monotonic() + 10
    while (status := collector.checkpoint_status(tag))[0] in ("pending", "unknown"):
        assert time.monotonic() < deadline, status
        time.sleep(0.01)
    return status


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


def tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


@pytest.mark.parametrize(
    "call",
    [
        lambda c: c.begin_file("../../etc/passwd"),
        lambda c: c.begin_file("/etc/passwd"),
        lambda c: c.begin_file("model/../../x"),
        lambda c: c.begin_file("linked/x"),  # a symbolic link below the run dir, to outside
        lambda c: c.checkpoint_staging("../x"),
        lambda c: c.checkpoint_route("../x"),
        lambda c: c.checkpoint_route("step-1/.."),
        lambda c: c.checkpoint_submitted("../x", 0, {"step": 1, "world_size": 1}),
        lambda c: c.checkpoint_verified("../run"),
        lambda c: c.checkpoint_read("../x", "a.bin", 0, 10),
        lambda c: c.checkpoint_path("/tmp"),
    ],
)
def test_collector_refuses_tags_and_names_that_leave_their_root_and_writes_nothing(
    tmp_path: Path, call
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    collector = RunCollector(str(tmp_path / "run"), str(tmp_path / "run" / "checkpoints"))
    (tmp_path / "run" / "linked").symlink_to(outside)
    before = tree(tmp_path)
    with pytest.raises(UnsafeNameError):
        call(collector)
    assert tree(tmp_path) == before


def test_checkpoint_reads_serve_only_what_the_verified_manifest_lists(tmp_path: Path) -> None:
    collector = RunCollector(str(tmp_path / "run"), str(tmp_path / "ckpt"))
    staging = Path(collector.checkpoint_staging("step-2"))
    (staging / "ds").mkdir()
    (staging / "ds" / "state.pt").write_bytes(b"state")
    collector.checkpoint_submitted("step-2", 0, {"step": 2, "world_size": 1})
    assert wait_for_outcome(collector, "step-2") == ("committed", "")
    assert collector.checkpoint_read("step-2", "ds/state.pt", 1, 3) == b"tat"
    (tmp_path / "ckpt" / "step-2" / "planted.bin").write_bytes(b"x")  # not in the manifest
    for name in ("planted.bin", "manifest.json", "../step-2/ds/state.pt"):
        with pytest.raises(UnsafeNameError):
            collector.checkpoint_read("step-2", name, 0, 10)


def test_a_manifest_naming_a_file_outside_its_checkpoint_fails_verification(
    tmp_path: Path,
) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("not for workers")
    store = CheckpointStore(tmp_path / "ckpt")
    store.staging_dir("step-3")
    store.commit("step-3", {"step": 3, "world_size": 1})
    manifest_path = tmp_path / "ckpt" / "step-3" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["files"]["../../secret.txt"] = {"bytes": 15, "sha256": sha256_file(secret)}
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(CorruptCheckpointError, match=r"'\.\./\.\./secret\.txt'"):
        store.verify("step-3")


def test_a_rank_cannot_commit_a_symbolic_link_into_a_checkpoint(tmp_path: Path) -> None:
    (tmp_path / "secret.txt").write_text("not for the checkpoint")
    store = CheckpointStore(tmp_path / "ckpt")
    (store.staging_dir("step-1") / "weights.pt").symlink_to(tmp_path / "secret.txt")
    with pytest.raises(UnsafeNameError, match="symbolic link"):
        store.commit("step-1", {"step": 1, "world_size": 1})
    assert not (tmp_path / "ckpt" / "step-1").exists()


def test_the_shard_server_serves_only_files_and_batches_its_manifest_lists(
    tmp_path: Path,
) -> None:
    from cluster.head.shard_server import ShardServer
    from tests.fixtures import write_synthetic_split

    split = write_synthetic_split(tmp_path / "split", rows=64, max_tokens=8)
    (split / "notes.arrow").write_bytes((split / "shard-00000.arrow").read_bytes())
    server = ShardServer([str(split)])
    assert server.block(str(split), "shard-00000.arrow", 0).startswith(b"\xff")
    for shard, batch in (
        ("notes.arrow", 0),
        ("../split/shard-00000.arrow", 0),
        ("shard-00000.arrow", 99),
    ):
        with pytest.raises(KeyError, match="not in the split's manifest"):
            server.block(str(split), shard, batch)
    manifest = json.loads((split / "manifest.json").read_text())
    manifest["shards"][0]["file"] = "../elsewhere.arrow"
    (split / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="must be a file name beside the manifest"):
        ShardServer([str(split)])


def test_collector_appends_metrics_and_drains_each_record_once(tmp_path: Path) -> None:
    collector = RunCollector(str(tmp_path))
    collector.report({"event": "train", "step": 1})
    collector.report({"event": "eval", "step": 1})
    assert [r["event"] for r in collector.drain()] == ["train", "eval"]
    assert collector.drain() == []
    collector.close()
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["event"] for line in lines] == ["train", "eval"]


def test_the_head_commits_a_checkpoint_once_every_rank_delivered_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RAY_AUTH_TOKEN", TOKEN)
    collector = RunCollector(str(tmp_path / "run"), str(tmp_path / "ckpt"))
    staging = Path(collector.checkpoint_staging("step-4"))  # rank 0 is on the head
    (staging / "rank0.bin").write_bytes(b"zero")
    payload = b"one" * 1000  # rank 1, on another node, sends its file over the stream
    scratch = tmp_path / "rank1"
    scratch.mkdir()
    (scratch / "rank1.bin").write_bytes(payload)
    route = collector.checkpoint_route("step-4")
    assert send_dir(route, key_from_token(TOKEN), "step-4", 1, scratch) == len(payload)

    collector.checkpoint_submitted("step-4", 1, None)
    assert not collector.checkpoint_is_committed("step-4")  # rank 0's part not announced yet
    collector.checkpoint_submitted("step-4", 0, {"step": 4, "world_size": 2})
    assert wait_for_outcome(collector, "step-4") == ("committed", "")
    assert collector.checkpoint_is_committed("step-4")
    manifest = json.loads((tmp_path / "ckpt" / "step-4" / "manifest.json").read_text())
    assert manifest["files"]["rank1.bin"]["sha256"] == hashlib.sha256(payload).hexdigest()
    assert manifest["files"]["rank0.bin"]["sha256"] == hashlib.sha256(b"zero").hexdigest()
    [committed] = collector.drain()
    assert committed["event"] == "committed"
    assert (committed["streamed_files"], committed["streamed_bytes"]) == (1, len(payload))


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
    assert collector.checkpoint_status("step-8") == ("unknown", "")
    assert not collector.checkpoint_is_committed("step-8")  # rank 1's old delivery does not count


def test_collector_mirrors_metrics_and_status_into_mlflow(tmp_path: Path) -> None:
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    from cluster.head.collector import RunCollector
    from cluster.head.metrics_log import Trackers
    from cluster.head.mlflow import start_mlflow_run

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    config = {"optim": {"lr": 0.001}, "name": "job"}
    run_id = start_mlflow_run(uri, "exp", "run-1", config)
    collector = RunCollector(str(tmp_path / "run"), trackers=Trackers(mlflow_run=(uri, run_id)))
    report_sample_stream(collector)

    client = MlflowClient(uri)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["optim.lr"] == "0.001"
    losses = client.get_metric_history(run_id, "train/loss")
    assert [(m.step, m.value) for m in sorted(losses, key=lambda m: m.step)] == [(2, 0.9), (4, 0.4)]
    assert client.get_metric_history(run_id, "train/step_time_p99_s")
    assert client.get_metric_history(run_id, "eval/val_accuracy")[0].value == 0.75
    assert client.get_metric_history(run_id, "summary/test_accuracy")[0].value == 0.8
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert json.loads(lines[0])["step_time_mean_s"] == 1.0


def test_unusable_mlflow_uri_is_one_clear_line() -> None:
    pytest.importorskip("mlflow")
    from cluster.head.mlflow import MlflowUnavailable, start_mlflow_run

    with pytest.raises(MlflowUnavailable) as caught:
        start_mlflow_run("http://127.0.0.1:9", "exp", "run", {})
    message = str(caught.value)
    assert message.startswith("output.mlflow_uri: cannot use 'http://127.0.0.1:9'")
    assert "\n" not in message


def test_a_failed_commit_is_recorded_answered_to_every_rank_and_keeps_the_previous_one(
    tmp_path: Path,
) -> None:
    from trainer.formats.checkpoints import CheckpointStore

    collector = RunCollector(str(tmp_path / "run"), str(tmp_path / "ckpt"))
    collector.report({"event": "rank_start", "rank": 0})
    for tag, in_the_way in (("step-4", False), ("step-8", True)):
        staging = Path(collector.checkpoint_staging(tag))
        (staging / "rank0.bin").write_bytes(b"zero")
        if in_the_way:  # the commit cannot write its manifest: the fault lands in the commit
            (staging / "manifest.json").mkdir()
        collector.checkpoint_submitted(tag, 1, None)
        collector.checkpoint_submitted(tag, 0, {"step": int(tag[5:]), "world_size": 2})
    assert wait_for_outcome(collector, "step-4") == ("committed", "")
    state, reason = wait_for_outcome(collector, "step-8")
    assert (
        state == "failed" and reason.startswith("IsADirectoryError:") and "manifest.json" in reason
    )
    failed = [r for r in collector.drain() if r["event"] == "commit_failed"]
    assert [r["tag"] for r in failed] == ["step-8"]
    assert collector.outcome()["commit_failures"] == [("step-8", reason)]
    store = CheckpointStore(tmp_path / "ckpt")
    assert store.verify("step-4")["state"]["step"] == 4  # the previous one is whole
    assert [tag for tag, _ in store.complete()] == ["step-4"]
    assert not list((tmp_path / "ckpt").glob(".tmp-*"))  # the failed save's files are gone

    collector.checkpoint_failed("step-12", 1, "RuntimeError: file write failed")  # a rank's write
    assert collector.checkpoint_status("step-12") == (
        "failed",
        "rank 1 could not save its part: RuntimeError: file write failed",
    )
