"""The golden end-to-end test: the real CLI on the shipped demo config (real pretrained MiniLM,
generated data, embedded Ray, 2 DeepSpeed ZeRO-2 workers) with a reduced step budget."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT
from tests.fixtures import ftlaunch
from tests.integration.test_train_ray import reload_and_predict

pytestmark = [pytest.mark.slow, pytest.mark.ray, pytest.mark.dist]


@pytest.mark.timeout(900)
def test_demo_config_end_to_end(tmp_path: Path) -> None:
    data = tmp_path / "demo"
    subprocess.run(
        [sys.executable, "-m", "launcher.cli", "demo-data", "--out", str(data)],
        check=True,
        cwd=REPO_ROOT,
        timeout=60,
    )
    out = tmp_path / "out"
    overrides = {
        "data.train": data / "train.jsonl",
        "data.validation": data / "validation.jsonl",
        "data.test": data / "test.jsonl",
        "data.cache_dir": tmp_path / "cache",
        "output.dir": out,
        "training.max_steps": 45,
        "training.eval_every": 15,
    }
    args = [a for k, v in overrides.items() for a in ("--set", f"{k}={v}")]
    result = subprocess.run(
        [sys.executable, "-m", "launcher.cli", "run", "configs/examples/demo-minilm.yaml", *args],
        cwd=REPO_ROOT,
        env=dict(os.environ),
        capture_output=True,
        text=True,
        timeout=840,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "ftlaunch run summary" in result.stdout and "test accuracy" in result.stdout

    summary = json.loads((out / "summary.json").read_text())
    for key in (
        "best_validation",
        "test",
        "majority_baseline_accuracy",
        "steps",
        "wall_s",
        "stopped_early",
    ):
        assert key in summary
    assert summary["steps"] == 45
    assert summary["test"]["accuracy"] > summary["majority_baseline_accuracy"] + 0.15, summary
    assert 0 < summary["test"]["macro_f1"] <= 1

    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["event"] == "train"]
    evals = [r for r in records if r["event"] == "eval"]
    assert {"step", "epoch", "loss", "lr", "samples_per_s", "tokens_per_s"} <= train[0].keys()
    assert [e["step"] for e in evals] == [15, 30, 45]
    assert train[-1]["loss"] < train[0]["loss"]

    config = (out / "config.yaml").read_text()
    assert "max_steps: 45" in config and "zero_stage: 2" in config
    predictions = [
        json.loads(line) for line in (out / "predictions_test.jsonl").read_text().splitlines()
    ]
    accuracy = sum(p["prediction"] == p["label"] for p in predictions) / len(predictions)
    assert accuracy == pytest.approx(summary["test"]["accuracy"], abs=1e-9)
    reloaded = reload_and_predict(out / "model", data / "test.jsonl", max_length=64)
    # Padding differs between the distributed eval and this single batch, so logits differ in the
    # last float bits; allow one near-tie flip out of 600 rows, no more.
    disagreements = sum(a != p["prediction"] for a, p in zip(reloaded, predictions, strict=True))
    assert disagreements <= 1
    reloaded_accuracy = sum(
        a == p["label"] for a, p in zip(reloaded, predictions, strict=True)
    ) / len(predictions)
    assert reloaded_accuracy == pytest.approx(
        summary["test"]["accuracy"], abs=1.5 / len(predictions)
    )

    # `ftlaunch predict` on the finished run: the run's label map, and the labels its own test
    # evaluation wrote (same near-tie allowance as the reload above)
    predicted = tmp_path / "predicted.jsonl"
    result = ftlaunch(
        "predict", str(out), "--input", str(data / "test.jsonl"), "--output", str(predicted)
    )
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in predicted.read_text().splitlines()]
    test_rows = [json.loads(line) for line in (data / "test.jsonl").read_text().splitlines()]
    assert [r["text"] for r in rows] == [r["text"] for r in test_rows]  # input rows, in order
    labels = json.loads((out / "model" / "label_map.json").read_text())["labels"]
    assert all(list(r["probabilities"]) == labels for r in rows)
    assert all(abs(sum(r["probabilities"].values()) - 1) < 1e-4 for r in rows)
    assert all(max(r["probabilities"], key=r["probabilities"].get) == r["prediction"] for r in rows)
    flips = sum(r["prediction"] != p["prediction"] for r, p in zip(rows, predictions, strict=True))
    assert flips <= 1, flips
