"""The run directory on the head: nothing in output.dir changes until a run commits, and ftlaunch
writes only into a directory that is its own and apart from the run's inputs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from launcher.errors import UserError
from launcher.rundir import (
    check_apart,
    check_output_dir,
    claim_output_dir,
    commit_run,
    create_staging,
)


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


def test_output_dir_must_stay_apart_from_the_inputs(tmp_path: Path) -> None:
    model, data = tmp_path / "models" / "bert", tmp_path / "data" / "train.jsonl"
    inputs = {"model.path": model, "data.train": data}
    check_apart(tmp_path / "runs" / "x", inputs)  # apart: fine
    for output, fragment in [
        (tmp_path / "models", "contains model.path"),
        (model, "contains model.path"),
        (model / "runs", "lies inside model.path"),
        (tmp_path, "contains model.path"),
        (tmp_path / "data", "contains data.train"),
    ]:
        with pytest.raises(UserError) as refused:
            check_apart(output, inputs)
        assert fragment in refused.value.messages[0], refused.value.messages
    with pytest.raises(UserError) as both:
        check_apart(tmp_path, inputs)
    assert len(both.value.messages) == 2  # one line per input it overlaps


def test_only_a_new_empty_or_marked_output_dir_is_claimed(tmp_path: Path) -> None:
    fresh = tmp_path / "fresh" / "run"
    claim_output_dir(fresh)
    assert (fresh / ".ftlaunch").is_file()
    (fresh / "model").mkdir()
    claim_output_dir(fresh)  # marked: an earlier run's, fine
    empty = tmp_path / "empty"
    empty.mkdir()
    claim_output_dir(empty)
    assert (empty / ".ftlaunch").is_file()
    users = tmp_path / "users"
    users.mkdir()
    (users / "notes.txt").write_text("mine")
    (tmp_path / "a-file").write_text("x")
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    for bad, fragment in [
        (users, "is not empty and was not created by ftlaunch"),
        (tmp_path / "a-file", "is not a directory"),
        (tmp_path / "dangling", "dangling symbolic link"),
    ]:
        with pytest.raises(UserError, match=fragment):
            check_output_dir(bad)
        with pytest.raises(UserError, match=fragment):
            claim_output_dir(bad)
    assert sorted(p.name for p in users.iterdir()) == ["notes.txt"]  # nothing written there


def test_export_writes_into_a_non_empty_out_only_with_overwrite(tmp_path: Path) -> None:
    from launcher.commands.export import check_out

    run_dir, out = tmp_path / "run", tmp_path / "exported"
    (run_dir / "checkpoints").mkdir(parents=True)
    check_out(out, run_dir, overwrite=False)  # new: fine
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="is not empty; pass --overwrite"):
        check_out(out, run_dir, overwrite=False)
    check_out(out, run_dir, overwrite=True)
    for inside in (run_dir / "checkpoints", run_dir / "checkpoints" / "step-4" / "x", run_dir):
        with pytest.raises(UserError, match="overlaps the run's checkpoints"):
            check_out(inside, run_dir, overwrite=True)
