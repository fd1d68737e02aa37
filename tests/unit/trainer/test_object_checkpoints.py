"""Checkpoints in an object store (output.checkpoint_uri), exercised through a file:// URI (the
same pyarrow.fs code as s3://; the S3 run is in tests/integration/test_checkpoint_store_s3.py):
invisible until COMPLETE, one prefix per attempt, a crashed attempt's objects discarded, the
newest commit of a re-saved step wins, pruning, signatures, hashes checked on download, the
head's committer committing there, and a URI that cannot be written refused before anything."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cluster.head.checkpoints import COMMITTED, CheckpointCommitter
from launcher.errors import UserError
from launcher.resume import check_checkpoint_uri, choose_resume_tag
from tests.unit.trainer.test_checkpoint_store import signing_for
from trainer.config import JobConfig
from trainer.formats.checkpoints import (
    COMPLETE_MARKER,
    CheckpointStore,
    CorruptCheckpointError,
    UnsignedCheckpointError,
)
from trainer.formats.object_checkpoints import ObjectCheckpointStore, open_checkpoint_store


def store_at(tmp_path: Path, keep_last: int = 2) -> ObjectCheckpointStore:
    store = open_checkpoint_store(
        f"file://{tmp_path}/bucket/ckpt", keep_last, signing_for(tmp_path)
    )
    assert isinstance(store, ObjectCheckpointStore)
    return store


def save(store: ObjectCheckpointStore, tmp_path: Path, step: int, payload: bytes = b"w") -> str:
    """Two ranks upload their parts; the head commits with the digests they reported."""
    tag = f"step-{step}"
    digests = {}
    for rank in (0, 1):
        local = tmp_path / f"scratch-{step}-{rank}"
        (local / "ds").mkdir(parents=True, exist_ok=True)
        (local / "ds" / f"zero_pp_rank_{rank}_states.pt").write_bytes(payload * (rank + 1))
        (local / f"trainer_state_rank{rank}.json").write_text(json.dumps({"step": step}))
        digests |= store.upload(store.staging_dir(tag), local)
    store.commit(tag, {"step": step, "run_id": "r", "config_fingerprint": "f"}, digests)
    return tag


def objects(tmp_path: Path) -> list[str]:
    root = tmp_path / "bucket" / "ckpt"
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def test_staged_objects_are_invisible_and_discarded_and_a_commit_is_complete(
    tmp_path: Path,
) -> None:
    store = store_at(tmp_path)
    local = tmp_path / "part"
    local.mkdir()
    (local / "trainer_state_rank0.json").write_text("{}")
    crashed = store.staging_dir("step-4")
    store.upload(crashed, local)
    assert store.complete() == [] and not store.is_complete("step-4")
    assert store.discard_incomplete() == [crashed]  # a new worker group: a new attempt
    assert objects(tmp_path) == [] and store.staging_dir("step-4") != crashed

    tag = save(store, tmp_path, 4)
    ((name, manifest),) = store.complete()
    assert name == tag and store.is_complete(tag)
    prefix = manifest["prefix"]
    assert f"{prefix}/{COMPLETE_MARKER}" in objects(tmp_path)
    assert set(manifest["files"]) == {
        "ds/zero_pp_rank_0_states.pt",
        "ds/zero_pp_rank_1_states.pt",
        "trainer_state_rank0.json",
        "trainer_state_rank1.json",
    }
    assert store.verify(tag)["state"]["step"] == 4
    rank1 = store.download(manifest, lambda n: "rank_1" in n or "rank1" in n, tmp_path / "r1")
    assert sorted(p.name for p in rank1.rglob("*") if p.is_file()) == [
        "trainer_state_rank1.json",
        "zero_pp_rank_1_states.pt",
    ]
    assert store.discard_incomplete() == []  # a complete checkpoint is never discarded


def test_a_resaved_step_keeps_the_newest_commit_and_pruning_keeps_the_last(
    tmp_path: Path,
) -> None:
    store = store_at(tmp_path, keep_last=2)
    save(store, tmp_path, 2, b"old")
    first = store.complete()[0][1]["prefix"]
    store.discard_incomplete()  # the restart that saves step 2 again
    save(store, tmp_path, 2, b"new")
    ((_, manifest),) = store.complete()
    assert manifest["prefix"] != first and not any(o.startswith(first) for o in objects(tmp_path))
    save(store, tmp_path, 4)
    save(store, tmp_path, 6)
    assert [tag for tag, _ in store.complete()] == ["step-4", "step-6"]
    assert {o.split("/")[0].split(".")[0] for o in objects(tmp_path)} == {"step-4", "step-6"}
    assert store.latest("r") == store.complete()[-1] and store.latest("other") is None


def test_a_half_deleted_prefix_is_never_complete(tmp_path: Path) -> None:
    store = store_at(tmp_path)
    save(store, tmp_path, 2)
    prefix = store.complete()[0][1]["prefix"]
    (tmp_path / "bucket" / "ckpt" / prefix / COMPLETE_MARKER).unlink()  # a deletion that died
    assert store.complete() == []
    assert store.discard_incomplete() == [prefix] and objects(tmp_path) == []


def test_a_store_that_fails_while_listing_is_an_error_never_no_checkpoint(
    tmp_path: Path,
) -> None:
    store = store_at(tmp_path)
    save(store, tmp_path, 2)
    committer = CheckpointCommitter(store)
    assert committer.latest("r") == "step-2"
    root = tmp_path / "bucket" / "ckpt"
    root.rename(tmp_path / "moved")
    root.write_text("not a directory")  # the listing itself fails
    with pytest.raises(OSError):
        committer.latest("r")  # a resume would otherwise silently start from step 0
    with pytest.raises(OSError):
        store.discard_incomplete()


def test_corrupted_truncated_and_unsigned_checkpoints_are_refused(tmp_path: Path) -> None:
    store = store_at(tmp_path)
    tag = save(store, tmp_path, 2, b"weights")
    manifest = store.verify(tag)
    shard = tmp_path / "bucket" / "ckpt" / manifest["prefix"] / "ds" / "zero_pp_rank_0_states.pt"
    shard.write_bytes(b"wEights")  # same size: only the download's hash finds it
    store.verify(tag)
    with pytest.raises(CorruptCheckpointError, match=r"zero_pp_rank_0_states\.pt: does not match"):
        store.download(manifest, lambda name: True, tmp_path / "dl")
    shard.write_bytes(b"w")
    with pytest.raises(CorruptCheckpointError, match="missing or truncated"):
        store.verify(tag)
    elsewhere = ObjectCheckpointStore(store.where, 2, signing_for(tmp_path / "another-dir"))
    with pytest.raises(UnsignedCheckpointError, match=r"not signed for this output\.dir"):
        elsewhere.check_signed(tag)


def test_a_downloaded_checkpoint_verifies_as_a_local_one(tmp_path: Path) -> None:
    store = store_at(tmp_path)
    tag = save(store, tmp_path, 8)
    local = store.download_checkpoint(tag, tmp_path / "export" / tag)
    assert CheckpointStore(local.parent).verify(tag)["state"]["step"] == 8


def test_the_head_commits_in_the_store_once_every_rank_uploaded(tmp_path: Path) -> None:
    committer = CheckpointCommitter(store_at(tmp_path))
    committer.restart()
    prefix = str(committer.staging("step-3"))
    for rank in (0, 1):
        local = tmp_path / f"rank{rank}"
        local.mkdir()
        (local / f"trainer_state_rank{rank}.json").write_text("{}")
        digests = committer.store.upload(prefix, local)  # what StoreCheckpointSink does
        committer.uploaded("step-3", digests)
        state = {"step": 3, "world_size": 2, "run_id": "r"} if rank == 0 else None
        committer.submitted("step-3", rank, state)
    committer.restart()  # waits for the commit thread
    assert committer.status("step-3") == (COMMITTED, "")
    assert committer.latest("r") == "step-3"
    assert len(committer.verified("step-3")["files"]) == 2


def test_resume_reads_the_store_and_a_fresh_run_refuses_its_checkpoints(tmp_path: Path) -> None:
    store = store_at(tmp_path)
    save(store, tmp_path, 5)
    uri, sign = f"file://{tmp_path}/bucket/ckpt", signing_for(tmp_path)
    out = tmp_path / "out"
    assert choose_resume_tag(out, True, "f", 2, signing=sign, checkpoint_uri=uri) == "step-5"
    with pytest.raises(UserError, match="holds checkpoints of an earlier run"):
        choose_resume_tag(out, False, "f", 2, signing=sign, checkpoint_uri=uri)
    (tmp_path / "not-a-store").write_text("a file where the store's root should be")
    broken = f"file://{tmp_path}/not-a-store"
    for resume in (True, False):  # a listing that fails is one line, never "start over"
        with pytest.raises(UserError) as caught:
            choose_resume_tag(out, resume, "f", 2, signing=sign, checkpoint_uri=broken)
        (line,) = str(caught.value).splitlines()
        assert line.startswith("output.checkpoint_uri: cannot list the checkpoints in file://")


def test_a_checkpoint_uri_that_cannot_be_written_is_one_line(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    job = JobConfig.model_validate(
        {
            "model": {"path": "m"},
            "data": {"train": "t", "validation": "v", "test": "x"},
            "output": {"checkpoint_uri": f"file://{blocker}/ckpt"},
        }
    )
    with pytest.raises(UserError) as caught:
        check_checkpoint_uri(job)
    (line,) = str(caught.value).splitlines()
    assert line.startswith(f"output.checkpoint_uri: cannot write to file://{blocker}/ckpt: ")
    with pytest.raises(ValueError, match="must be a URI"):
        JobConfig.model_validate(job.model_dump() | {"output": {"checkpoint_uri": "bucket/x"}})
    ok = job.model_copy(update={"output": job.output.model_copy(update={"checkpoint_uri": None})})
    check_checkpoint_uri(ok)
    writable = f"file://{tmp_path}/store"
    check_checkpoint_uri(
        job.model_copy(
            update={"output": job.output.model_copy(update={"checkpoint_uri": writable})}
        )
    )
    assert list((tmp_path / "store").iterdir()) == []  # the probe object is removed
