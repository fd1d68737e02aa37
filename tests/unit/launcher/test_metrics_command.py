"""`ftlaunch metrics RUN_DIR [--plot]` on a finished run and on a live staging directory."""

from __future__ import annotations

import json
from pathlib import Path

from tests.fixtures import assert_user_error, ftlaunch


def write_metrics(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = [{"event": "start", "total_steps": 4}]
    rows += [
        {"event": "train", "step": s, "loss": 1.0 / s, "samples_per_s": 10.0 + s}
        for s in (1, 2, 3, 4)
    ]
    rows += [
        {
            "event": "eval",
            "step": s,
            "val_loss": 0.5,
            "val_accuracy": 0.5 + s / 10,
            "val_macro_f1": 0.4,
        }
        for s in (2, 4)
    ]
    rows += [{"event": "checkpoint", "step": 4, "tag": "step-4", "blocked_s": 0.1}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_overview_and_plot(tmp_path: Path) -> None:
    write_metrics(tmp_path / "run" / "metrics.jsonl")
    result = ftlaunch(
        "metrics", str(tmp_path / "run"), "--plot", str(tmp_path / "curves.png"), timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert "best val_accuracy" in result.stdout and "0.9000 (step 4)" in result.stdout
    assert "last step-4" in result.stdout
    assert (tmp_path / "curves.png").read_bytes()[:4] == b"\x89PNG"


def test_json_is_one_document_with_stable_keys(tmp_path: Path) -> None:
    write_metrics(tmp_path / "run" / "metrics.jsonl")
    result = ftlaunch("metrics", str(tmp_path / "run"), "--json", timeout=120)
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert document["best_validation"] == {"metric": "val_accuracy", "value": 0.9, "step": 4}
    assert (document["last_step"], document["loss_first"], document["loss_last"]) == (4, 1.0, 0.25)
    assert document["checkpoints"] == ["step-4"] and document["stragglers"] == []
    assert [e["step"] for e in document["evaluations"]] == [2, 4]
    assert document["step_time_mean_s"] is None  # no gathered windows in this run
    assert set(document) == {
        "metrics_file",
        "last_step",
        "loss_first",
        "loss_last",
        "samples_per_s",
        "step_time_mean_s",
        "step_time_p99_max_s",
        "stragglers",
        "best_validation",
        "evaluations",
        "checkpoints",
    }


def test_reads_a_live_run(tmp_path: Path) -> None:
    write_metrics(tmp_path / "run" / ".run-x-1" / "metrics.jsonl")
    result = ftlaunch("metrics", str(tmp_path / "run"), timeout=120)
    assert result.returncode == 0 and "last step" in result.stdout


def test_missing_run_dir(tmp_path: Path) -> None:
    assert_user_error(
        ftlaunch("metrics", str(tmp_path / "nope"), timeout=120), "RUN_DIR: no metrics.jsonl"
    )
