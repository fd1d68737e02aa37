"""bf16 mixed precision and gradient checkpointing through the real loop and DeepSpeed (2 gloo
ranks, no Ray): a LoRA run under ZeRO-3 trains, and summary and the DeepSpeed config say so."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.fixtures import run_job_rank
from tests.integration.conftest import free_port
from tests.integration.test_loop_local import _spec

pytestmark = [pytest.mark.dist]


@pytest.mark.timeout(420)
def test_bf16_with_gradient_checkpointing_trains_lora_under_zero3(
    tmp_path: Path, keyword_data: dict
) -> None:
    from tests.integration.test_peft_methods import make_warm_tiny_bert

    # A warmed-up base (see test_peft_methods): LoRA on the random tiny BERT needs more steps.
    tiny_bert = make_warm_tiny_bert(tmp_path / "warm", keyword_data["train"])
    import torch
    import torch.multiprocessing as mp

    if not torch.cuda.is_available():  # the worker's own check must agree that CPU bf16 works
        from trainer.engines.base import check_precision

        check_precision("bf16")
    training = {
        "epochs": 1,
        "max_steps": 8,
        "micro_batch_size": 16,
        "log_every": 2,
        "eval_every": 1000,
        "precision": "bf16",
        "gradient_checkpointing": True,
    }
    spec = json.loads(_spec(tmp_path, tiny_bert, keyword_data, training, {"lr": 0.02}))
    spec["job"]["engine"]["zero_stage"] = 3
    spec["job"]["peft"] = {"method": "lora", "target_modules": ["query", "value", "dense"]}
    run_dir = tmp_path / "run"
    mp.spawn(
        run_job_rank, args=(2, free_port(), json.dumps(spec), str(run_dir)), nprocs=2, join=True
    )

    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    summary = next(r for r in records if r["event"] == "summary")
    assert summary["precision"] == "bf16" and summary["gradient_checkpointing"] is True
    assert summary["steps"] == 8 and summary["peft_method"] == "lora"
    losses = [r["loss"] for r in records if r["event"] == "train"]
    assert all(loss == loss for loss in losses) and losses[-1] < losses[0], losses
    assert (run_dir / "model" / "model.safetensors").is_file()


def test_precision_reaches_the_deepspeed_config() -> None:
    from launcher.config_loading import validate_job_dict
    from trainer.engines.base import deepspeed_config

    raw = {"model": {"path": "m"}, "data": {"train": "a", "validation": "b", "test": "c"}}
    for precision, bf16, fp16 in [("fp32", False, False), ("bf16", True, False)]:
        job = validate_job_dict(raw | {"training": {"precision": precision}})
        config = deepspeed_config(job, 2)
        assert (config["bf16"]["enabled"], config["fp16"]["enabled"]) == (bf16, fp16)
    gpu = validate_job_dict(
        raw | {"training": {"precision": "fp16"}, "cluster": {"gpus_per_worker": 1}}
    )
    assert deepspeed_config(gpu, 2)["fp16"] == {"enabled": True, "loss_scale": 0}
