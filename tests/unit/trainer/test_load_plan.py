"""How each rank builds the model (`trainer/model/build.py:load_plan`, pure): partitioned under
ZeRO-3 on either backend, in the training dtype under DeepSpeed only, on the meta device for FSDP
ranks other than 0, as before elsewhere."""

from __future__ import annotations

from typing import Any

import pytest

from launcher.config_loading import validate_job_dict
from trainer.model.build import LoadPlan, load_plan

MINIMAL = {"model": {"path": "m"}, "data": {"train": "a", "validation": "b", "test": "c"}}
DS_CONFIG: dict[str, Any] = {"zero_optimization": {"stage": 3}}


def plan(engine: dict[str, Any], rank: int, precision: str = "bf16") -> LoadPlan:
    raw = MINIMAL | {"engine": engine, "training": {"precision": precision}}
    raw["cluster"] = {"gpus_per_worker": 1}  # bf16 needs GPU workers
    job = validate_job_dict(raw)
    return load_plan(job, rank, DS_CONFIG if job.engine.runs_deepspeed() else None)


@pytest.mark.parametrize(
    "engine",
    [{"zero_stage": 3}, {"backend": "accelerate", "strategy": "deepspeed", "zero_stage": 3}],
)
def test_zero3_builds_partitioned_in_the_training_dtype_on_every_rank(
    engine: dict[str, Any],
) -> None:
    for rank in (0, 1):
        assert plan(engine, rank) == LoadPlan(dtype="bf16", zero3_config=DS_CONFIG)


def test_zero_below_3_loads_whole_in_the_training_dtype() -> None:
    assert plan({"zero_stage": 2}, 1) == LoadPlan(dtype="bf16")
    assert plan({"zero_stage": 0}, 0, precision="fp32") == LoadPlan(dtype="fp32")


def test_fsdp_ranks_above_0_build_empty_and_everything_accelerate_keeps_fp32() -> None:
    fsdp = {"backend": "accelerate", "strategy": "fsdp"}
    assert plan(fsdp, 0) == LoadPlan(dtype="fp32")
    assert plan(fsdp, 1) == LoadPlan(dtype="fp32", empty_params=True)
    assert plan({"backend": "accelerate", "strategy": "ddp"}, 1) == LoadPlan(dtype="fp32")
