"""The three Accelerate strategies are the same optimisation: 2 ranks (torch.multiprocessing over
gloo, no Ray) take two optimizer steps with DDP, FSDP and DeepSpeed ZeRO-2 through Accelerate,
each with (micro 8, accum 1) and (micro 4, accum 2) on the same samples. All six give the same
weights, and the schedule advanced exactly once per optimizer step."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.integration.conftest import free_port

pytestmark = [pytest.mark.dist]

RUNS = [
    (s, micro, accum) for s in ("ddp", "fsdp", "deepspeed") for micro, accum in ((8, 1), (4, 2))
]


def _worker(rank: int, world: int, port: int, model_dir: str, out: str) -> None:
    import torch
    import torch.distributed as dist
    from transformers import AutoModelForSequenceClassification

    from trainer.config.schema import JobConfig
    from trainer.engines import build_engine

    os.environ.update(
        RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world),
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
    )  # fmt: skip
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    try:
        g = torch.Generator().manual_seed(1)
        x = torch.randint(1000, 2000, (world, 8, 12), generator=g)[rank]
        y = torch.randint(0, 2, (world, 8), generator=g)[rank]
        for strategy, micro, accum in RUNS:
            job = JobConfig.model_validate(
                {
                    "model": {"path": model_dir},
                    "data": {"train": "a", "validation": "b", "test": "c"},
                    "engine": {"backend": "accelerate", "strategy": strategy},
                    "training": {"micro_batch_size": micro, "grad_accum": accum},
                    "optim": {"lr": 0.01, "warmup_ratio": 0},
                }
            )
            torch.manual_seed(0)
            model = AutoModelForSequenceClassification.from_pretrained(
                model_dir, num_labels=2, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0
            )
            engine = build_engine(model, job, world, total_steps=10)
            assert engine.describe()["num_processes"] == world
            for _ in range(2):
                for j in range(accum):
                    with engine.accumulate():
                        part = slice(j * micro, (j + 1) * micro)
                        loss = engine(input_ids=x[part], labels=y[part]).loss
                        engine.backward(loss)
                        engine.step()
            state = engine.consolidated_state_dict()
            lr = engine.get_lr()[0]
            engine.destroy()
            if rank == 0:
                torch.save({"state": state, "lr": lr}, Path(out) / f"{strategy}-{accum}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.timeout(300)
def test_strategies_and_accumulation_give_the_same_weights(tiny_bert: Path, tmp_path: Path) -> None:
    import torch
    import torch.multiprocessing as mp

    mp.spawn(_worker, args=(2, free_port(), str(tiny_bert), str(tmp_path)), nprocs=2, join=True)
    results = {(s, a): torch.load(tmp_path / f"{s}-{a}.pt", weights_only=True) for s, _, a in RUNS}
    reference = results[("ddp", 1)]["state"]
    for key, result in results.items():
        assert result["lr"] == pytest.approx(0.01 * 8 / 10), key  # two steps of linear decay
        assert result["state"].keys() == reference.keys(), key
        for name, tensor in reference.items():
            torch.testing.assert_close(result["state"][name], tensor, rtol=0, atol=1e-5, msg=name)
