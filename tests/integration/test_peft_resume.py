"""Resume from a PEFT checkpoint that holds only the trained tensors: the frozen base comes back
from model.path, and the resumed run continues exactly as an uninterrupted one (same losses).
One gloo rank, no Ray, ZeRO-2 with prompt tuning (the method whose base is reachable under two
names, so leaving frozen weights out of the checkpoint is most easily got wrong)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.integration.conftest import free_port
from tests.integration.test_loop_local import _spec

pytestmark = [pytest.mark.dist]
# Constant lr: the two halves are separate runs with different max_steps.
OPTIM = {"lr": 0.01, "schedule": "constant", "warmup_ratio": 0}


def _run(rank: int, port: int, spec_json: str, run_dir: str, ckpt: str, resume: str) -> None:
    import torch.distributed as dist

    from trainer.config.spec import RunSpec
    from trainer.local import LocalCheckpointSink, local_io
    from trainer.main import run_job

    os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1")
    os.environ["MASTER_PORT"] = str(port)
    dist.init_process_group("gloo", rank=0, world_size=1)
    try:
        out = Path(run_dir)
        sink = LocalCheckpointSink(Path(ckpt), resume_tag=resume or None)
        spec = RunSpec.model_validate_json(spec_json)
        run_job(spec, local_io(out, sink))
    finally:
        dist.destroy_process_group()


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
        mp.spawn(_run, args=(free_port(), spec(max_steps), str(out), ckpt, resume), nprocs=1)
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
