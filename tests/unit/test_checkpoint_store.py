"""The head-side checkpoint format: atomic commit, only complete checkpoints visible, pruning
after a newer one is complete, corruption named by file, resume decisions."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from launcher.errors import UserError
from launcher.resume import choose_resume_tag
from trainer.config.checkpoints import CheckpointStore, CorruptCheckpointError, step_tag


def write_part(store: CheckpointStore, step: int, payload: bytes = b"weights") -> None:
    staging = store.staging_dir(step_tag(step))
    (staging / "ds").mkdir(exist_ok=True)
    (staging / "ds" / "model.pt").write_bytes(payload)
    (staging / "trainer_state_rank0.json").write_text(json.dumps({"step": step}))


def test_a_staged_checkpoint_is_invisible_until_committed(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path, keep_last=2)
    write_part(store, 10)
    assert store.latest() is None  # half-written: never offered for resume
    store.commit(step_tag(10), {"step": 10, "run_id": "r1"})
    tag, manifest = store.latest()
    assert tag == "step-10" and manifest["state"]["step"] == 10
    assert set(manifest["files"]) == {"ds/model.pt", "trainer_state_rank0.json"}
    assert (tmp_path / "step-10" / "COMPLETE").is_file() and not (
        tmp_path / ".tmp-step-10"
    ).exists()
    assert store.verify("step-10")["tag"] == "step-10"


def test_only_keep_last_complete_checkpoints_survive(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path, keep_last=2)
    for step in (5, 10, 15):
        write_part(store, step)
        store.commit(step_tag(step), {"step": step, "run_id": "r"})
    write_part(store, 20)  # a newer one in progress does not count
    assert sorted(p.name for p in tmp_path.glob("step-*")) == ["step-10", "step-15"]
    assert store.latest()[0] == "step-15"


def test_latest_can_be_limited_to_one_run(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path, keep_last=3)
    write_part(store, 5)
    store.commit("step-5", {"step": 5, "run_id": "old"})
    assert store.latest("new") is None and store.latest("old")[0] == "step-5"


def test_verify_names_the_corrupted_file(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path)
    write_part(store, 7)
    store.commit("step-7", {"step": 7})
    (tmp_path / "step-7" / "ds" / "model.pt").write_bytes(b"weightz")
    with pytest.raises(
        CorruptCheckpointError, match=r"step-7/ds/model.pt: does not match the checkpoint manifest"
    ):
        store.verify("step-7")


def test_fresh_run_over_checkpoints_and_resume_decisions(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path / "checkpoints")
    assert choose_resume_tag(tmp_path, resume=False, fingerprint="f", keep_last=2) is None
    with pytest.raises(UserError, match="--resume: no complete checkpoint"):
        choose_resume_tag(tmp_path, resume=True, fingerprint="f", keep_last=2)
    write_part(store, 3)
    store.commit("step-3", {"step": 3, "config_fingerprint": "f"})
    with pytest.raises(UserError, match="holds checkpoints of an earlier run"):
        choose_resume_tag(tmp_path, resume=False, fingerprint="f", keep_last=2)
    assert choose_resume_tag(tmp_path, resume=True, fingerprint="f", keep_last=2) == "step-3"
    with pytest.raises(UserError, match="different model or incompatible config"):
        choose_resume_tag(tmp_path, resume=True, fingerprint="g", keep_last=2)
