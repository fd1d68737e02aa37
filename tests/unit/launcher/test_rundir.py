"""The run directory on the head: nothing in output.dir changes until a run commits."""

from __future__ import annotations

import json
from pathlib import Path

from launcher.rundir import commit_run, create_staging


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
