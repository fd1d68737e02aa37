"""Resume from a PEFT checkpoint that holds only the trained tensors: the frozen base comes back
from model.path, and the resumed run continues exactly as an uninterrupted one (same losses).
One gloo rank, no Ray, ZeRO-2 with prompt tuning (the method whose base is reachable under two
names, so leaving frozen weights out of the checkpoint is most easily got wrong)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.fixtures import run_job_rank
from tests.integration.conftest import free_port
from tests.integration.test_loop_local import _spec

pytestmark = [pytest.mark.dist]
# Constant lr: the two halves are separate runs with different max_steps.
OPTIM = {"lr": 0.01, "schedule": "constant", "warmup_ratio": 0}


def _losses(run_dir: Path) -> dict[int, float]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return {r["step"]: r["loss"] for r in map(json.loads, lines) if r["event"] == "train"}


@pytest.mark.timeout(420)
def test_prompt_tuning_resumes_exactly_from_an_adapter_only_checkpoint(
    tmp_path: Path, tiny_bert: Path, keyword_data: dict
) -> None:
    import torch.multiprocessing as mp

    def spec(max_steps: int) -> str:
        training = {
            "epochs": 2,
            "max_steps": max_steps,
            "micro_batch_size": 16,
            "log_every": 1,
            "eval_every": 1000,
            "checkpoint_every": 4,
        }
        raw = json.loads(_spec(tmp_path, tiny_bert, keyword_data, training, OPTIM))
        raw["job"]["engine"]["zero_stage"] = 2
        raw["job"]["peft"] = {"method": "prompt_tuning", "num_virtual_tokens": 2}
        return json.dumps(raw)

    def run(name: str, max_steps: int, ckpt: str, resume: str = "") -> Path:
        out = tmp_path / name
        mp.spawn(
            run_job_rank, args=(1, free_port(), spec(max_steps), str(out), ckpt, resume), nprocs=1
        )
        return out

    whole = run("whole", 8, str(tmp_path / "ckpt-whole"))
    run("first-half", 4, str(tmp_path / "ckpt"))
    checkpoint = tmp_path / "ckpt" / "step-4" / "ds"
    assert sum(p.stat().st_size for p in checkpoint.iterdir()) < 100_000  # weights alone: 4 MB
    resumed = run("resumed", 8, str(tmp_path / "ckpt"), resume="step-4")

    expected, got = _losses(whole), _losses(resumed)
    assert sorted(got) == [5, 6, 7, 8]
    for step in got:
        assert got[step] == pytest.approx(expected[step], abs=1e-6), (step, got, expected)
