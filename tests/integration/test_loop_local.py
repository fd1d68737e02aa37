"""The training loop without Ray: 2 ranks started with torch.multiprocessing over gloo, local
Reporter and ArtifactSink. Proves trainer/ stands alone and checks early stopping."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.fixtures import run_job_rank
from tests.integration.conftest import free_port

pytestmark = [pytest.mark.dist]


def _spec(
    tmp_path: Path, tiny_bert: Path, data: dict[str, Path], training: dict, optim: dict
) -> str:
    from launcher.data.sources import SplitSource, collect_label_names
    from launcher.data.tokenize import TokenizeOptions, prepare_split
    from trainer.config import JobConfig
    from trainer.config.spec import RunSpec

    sources = {k: SplitSource.single(f"data.{k}", p, "text", "label") for k, p in data.items()}
    labels = collect_label_names(sources["train"])
    dirs = {
        k: str(
            prepare_split(s, k, TokenizeOptions(tiny_bert, 32, labels), tmp_path / "c").directory
        )
        for k, s in sources.items()
    }
    job = JobConfig.model_validate(
        {
            "model": {"path": str(tiny_bert)},
            "data": {k: str(p) for k, p in data.items()} | {"max_length": 32},
            "training": training,
            "optim": optim,
            "engine": {"zero_stage": 1},
        }
    )
    return RunSpec(
        job=job, model_dir=str(tiny_bert), split_dirs=dirs, label_names=labels, run_id="t"
    ).model_dump_json()


@pytest.mark.timeout(300)
def test_early_stopping_stops_after_patience_runs_out(
    tmp_path: Path, tiny_bert: Path, keyword_data: dict
) -> None:
    import torch.multiprocessing as mp

    # A learning rate this small cannot change accuracy, so no evaluation after the first improves.
    training = {
        "epochs": 20,
        "micro_batch_size": 8,
        "eval_every": 2,
        "log_every": 1,
        "early_stopping_patience": 1,
        "early_stopping_metric": "accuracy",
    }
    spec = _spec(tmp_path, tiny_bert, keyword_data, training, optim={"lr": 1e-12})
    run_dir = tmp_path / "run"
    mp.spawn(run_job_rank, args=(2, free_port(), spec, str(run_dir)), nprocs=2, join=True)

    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    evals = [r["step"] for r in records if r["event"] == "eval"]
    summary = next(r for r in records if r["event"] == "summary")
    assert evals == [2, 4, 6]
    assert summary["stopped_early"] is True and summary["steps"] == 6
    assert summary["best_validation"]["step"] == 2
    assert (run_dir / "model" / "model.safetensors").is_file()
    assert len((run_dir / "predictions_test.jsonl").read_text().splitlines()) == 64
