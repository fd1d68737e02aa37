"""Real Ray, real DeepSpeed ranks over gloo, the real CLI: a tiny BERT fine-tuned by 2 workers.

Checks, for ZeRO 0, 2 and 3: the run completes, the loss goes down, and the model
saved on the head reloads with plain transformers and predicts exactly what the trained model
predicted on the test split. For ZeRO-2 and ZeRO-3 the same run checks
`ftlaunch export`: the consolidated checkpoint equals the model the run saved (validation only at
the last step, so the saved best model is the last checkpoint's weights).
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from launcher.rundir import claim_output_dir
from tests.fixtures import assert_user_error, ftlaunch
from tests.integration.conftest import cluster_env

pytestmark = [pytest.mark.ray, pytest.mark.dist]


def write_job(tmp_path: Path, model: Path, data: dict[str, Path], extra: str = "") -> Path:
    job = tmp_path / "job.yaml"
    job.write_text(
        f"""
name: tiny
model: {{path: {model}}}
data: {{train: {data["train"]}, validation: {data["validation"]}, test: {data["test"]}, max_length: 32,
        cache_dir: {tmp_path / "cache"}}}
optim: {{lr: 0.002}}
training: {{epochs: 12, micro_batch_size: 16, log_every: 4, eval_every: 1000, checkpoint_every: 48}}
cluster: {{num_workers: 2}}
output: {{dir: {tmp_path / "out"}}}
{extra}
"""
    )
    return job


def read_metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def reload_and_predict(model_dir: Path, test_file: Path, max_length: int = 32) -> list[str]:
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    texts = [json.loads(line)["text"] for line in test_file.read_text().splitlines()]
    with torch.no_grad():
        batch = tokenizer(
            texts, truncation=True, max_length=max_length, padding=True, return_tensors="pt"
        )
        ids = model(**batch).logits.argmax(-1).tolist()
    return [model.config.id2label[i] for i in ids]


@pytest.mark.timeout(420)
@pytest.mark.parametrize(
    ("name", "overrides"),
    [
        ("zero0", ["engine.zero_stage=0"]),
        ("zero2", ["engine.zero_stage=2", "output.mlflow_uri=MLFLOW"]),
        # LoRA (and IA3 under ZeRO-3, exported merged) is test_peft_methods.py's
        ("zero3", ["engine.zero_stage=3"]),
    ],
)
def test_two_workers_fine_tune_and_the_saved_model_reproduces_predictions(
    tmp_path: Path,
    tiny_bert: Path,
    keyword_data: dict[str, Path],
    ray_head: dict[str, str],
    name: str,
    overrides: list[str],
) -> None:
    job = write_job(tmp_path, tiny_bert, keyword_data)
    args = [
        "run",
        str(job),
        "--address",
        ray_head["address"],
        *[a for o in overrides for a in ("--set", o)],
    ]
    mlflow_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    args = [a.replace("MLFLOW", mlflow_uri) for a in args]
    result = ftlaunch(*args, env=cluster_env(ray_head))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    out = tmp_path / "out"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["steps"] > 0 and summary["wall_s"] > 0
    assert summary["zero_stage"] == int(overrides[0].split("=")[1])
    train = [r for r in read_metrics(out) if r["event"] == "train"]
    assert train[-1]["loss"] < train[0]["loss"] * 0.9, [r["loss"] for r in train]
    assert all(r["samples_per_s"] > 0 and r["tokens_per_s"] > 0 and "lr" in r for r in train)
    # every rank's window reached the head, which added step-time statistics
    for record in train:
        assert len(record["rank_loss"]) == len(record["rank_data_wait_s"]) == 2
        assert all(mb > 50 for mb in record["rank_peak_rss_mb"])
        assert 0 < record["step_time_mean_s"] <= record["step_time_p99_s"]
        assert record["step_time_p99_s"] <= record["step_time_max_s"]
    if any("mlflow_uri" in o for o in overrides):
        assert_mirrored_in_mlflow(mlflow_uri, train)
    assert any(r["event"] == "eval" for r in read_metrics(out))
    assert summary["test"]["accuracy"] > summary["majority_baseline_accuracy"] + 0.2

    expected = [
        json.loads(line)["prediction"]
        for line in (out / "predictions_test.jsonl").read_text().splitlines()
    ]
    assert reload_and_predict(out / "model", keyword_data["test"]) == expected
    config = yaml_load(out / "config.yaml")
    assert config["cluster"]["address"] == ray_head["address"]
    if name != "zero0":
        assert_export_equals_the_saved_model(out, tmp_path, keyword_data["test"], name == "zero2")


def assert_export_equals_the_saved_model(
    out: Path, tmp_path: Path, test_file: Path, refusals: bool
) -> None:
    """`ftlaunch export` of the newest checkpoint (step 96, the last step) equals the saved model;
    `refusals`: also check its two bad-input lines."""
    import torch
    from safetensors.torch import load_file

    exported = ftlaunch("export", str(out), "--out", str(tmp_path / "exported"), timeout=200)
    assert exported.returncode == 0, exported.stderr[-3000:]
    assert "exported step-96" in exported.stdout and "reload verified" in exported.stdout
    ours, saved = (
        load_file(str(tmp_path / "exported" / "model.safetensors")),
        load_file(str(out / "model" / "model.safetensors")),
    )
    assert ours.keys() == saved.keys()
    for key, tensor in saved.items():
        torch.testing.assert_close(ours[key], tensor, rtol=0, atol=1e-5, msg=key)
    assert reload_and_predict(tmp_path / "exported", test_file) == reload_and_predict(
        out / "model", test_file
    )
    if refusals:
        missing = ftlaunch(
            "export", str(out), "--checkpoint", "step-7", "--out", str(tmp_path / "x"), timeout=60
        )
        assert_user_error(missing, "--checkpoint: 'step-7' is not a complete checkpoint")
        assert_user_error(
            ftlaunch("export", str(tmp_path), "--out", str(tmp_path / "x"), timeout=60),
            "RUN_DIR: no complete checkpoint",
        )


def assert_mirrored_in_mlflow(uri: str, train: list[dict]) -> None:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    (experiment,) = [e for e in client.search_experiments() if e.name == "tiny"]
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED"
    assert run.data.params["cluster.num_workers"] == "2"
    losses = sorted(client.get_metric_history(run.info.run_id, "train/loss"), key=lambda m: m.step)
    assert [(m.step, m.value) for m in losses] == [(r["step"], r["loss"]) for r in train]
    assert client.get_metric_history(run.info.run_id, "summary/test_accuracy")


def yaml_load(path: Path) -> dict:
    import yaml

    return yaml.safe_load(path.read_text())


@pytest.mark.timeout(300)
def test_failure_in_a_worker_exits_1_with_its_error_and_keeps_earlier_results(
    tmp_path: Path, tiny_bert: Path, keyword_data: dict[str, Path], ray_head: dict[str, str]
) -> None:
    out = tmp_path / "out"
    claim_output_dir(out)  # an earlier run's output.dir, with its results
    (out / "summary.json").write_text('{"earlier": true}')
    # A model whose weight file is cut short passes every launcher check (config, tokenizer) and
    # fails inside every worker when the weights load, after Ray started them.
    broken = tmp_path / "broken-model"
    shutil.copytree(tiny_bert, broken)
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    job = write_job(tmp_path, broken, keyword_data)
    args = ["run", str(job), "--address", ray_head["address"], "--set", "training.max_failures=0"]
    result = ftlaunch(*args, env=cluster_env(ray_head))
    assert result.returncode == 1, result.stderr[-3000:]
    last = result.stderr.strip().splitlines()[-1]
    # Every rank fails the same way; whichever Ray reports first is named.
    assert re.match(r"error: training failed on rank \d+: ", last), last
    assert "Traceback" not in result.stderr
    assert json.loads((out / "summary.json").read_text()) == {"earlier": True}


@pytest.mark.timeout(180)
def test_more_workers_than_the_cluster_can_place_fails_fast(
    tmp_path: Path, tiny_bert: Path, keyword_data: dict[str, Path]
) -> None:
    job = write_job(tmp_path, tiny_bert, keyword_data)
    result = ftlaunch(
        "run",
        str(job),
        "--set",
        "cluster.num_workers=3",
        "--set",
        "cluster.num_cpus=2",
        timeout=150,
    )
    assert result.returncode == 2, result.stderr[-3000:]
    (line,) = result.stderr.strip().splitlines()
    assert (
        line.startswith("error: cluster.num_workers: needs 3 workers x 1 CPU")
        and "can place at most 2" in line
    )
