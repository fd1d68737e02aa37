"""The three Accelerate strategies are the same optimisation: 2 ranks (torch.multiprocessing over
gloo, no Ray) take two optimizer steps with DDP, FSDP and DeepSpeed ZeRO-2 through Accelerate,
each with (micro 8, accum 1) and (micro 4, accum 2) on the same samples. All six give the weights
of an independent reference, plain torch AdamW on one process over both ranks' samples (the
same init, decay groups, clipping and schedule, written out here), and those weights moved well
beyond the tolerance; the schedule advanced exactly once per optimizer step."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.integration.conftest import free_port

pytestmark = [pytest.mark.dist]

RUNS = [
    (s, micro, accum) for s in ("ddp", "fsdp", "deepspeed") for micro, accum in ((8, 1), (4, 2))
]
OPTIM = {"lr": 0.01, "warmup_ratio": 0, "weight_decay": 0.01, "grad_clip": 1.0}
TOTAL_STEPS, WORLD = 10, 2


def batches(world: int):
    import torch

    g = torch.Generator().manual_seed(1)
    return torch.randint(1000, 2000, (world, 8, 12), generator=g), torch.randint(
        0, 2, (world, 8), generator=g
    )


def fresh_model(model_dir: str):
    import torch
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(0)
    return AutoModelForSequenceClassification.from_pretrained(
        model_dir, num_labels=2, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0
    )


def plain_torch_reference(model_dir: str) -> tuple[dict, dict]:
    """(initial, final) weights of two AdamW steps in one process on both ranks' samples: DDP's
    gradient is the mean of the ranks' mean losses, which is this loss."""
    import torch
    import torch.nn.functional as F

    model = fresh_model(model_dir)
    initial = {k: v.detach().clone() for k, v in model.state_dict().items()}
    no_decay = ("bias", "LayerNorm.weight")
    params = list(model.named_parameters())
    groups = [
        {
            "params": [p for n, p in params if not any(m in n for m in no_decay)],
            "weight_decay": 0.01,
        },
        {"params": [p for n, p in params if any(m in n for m in no_decay)], "weight_decay": 0.0},
    ]
    optimizer = torch.optim.AdamW(groups, lr=0.01, betas=(0.9, 0.999), eps=1e-8)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: (TOTAL_STEPS - s) / TOTAL_STEPS
    )
    x, y = batches(WORLD)
    for _ in range(2):
        optimizer.zero_grad()
        loss = sum(F.cross_entropy(model(input_ids=x[r]).logits, y[r]) for r in range(WORLD))
        (loss / WORLD).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
    return initial, {k: v.detach().clone() for k, v in model.state_dict().items()}


def _worker(rank: int, world: int, port: int, model_dir: str, out: str) -> None:
    import torch
    import torch.distributed as dist

    from trainer.config.schema import JobConfig
    from trainer.engines import build_engine

    os.environ.update(
        RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world),
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
    )  # fmt: skip
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    try:
        xs, ys = batches(world)
        x, y = xs[rank], ys[rank]
        for strategy, micro, accum in RUNS:
            job = JobConfig.model_validate(
                {
                    "model": {"path": model_dir},
                    "data": {"train": "a", "validation": "b", "test": "c"},
                    "engine": {"backend": "accelerate", "strategy": strategy},
                    "training": {"micro_batch_size": micro, "grad_accum": accum},
                    "optim": OPTIM,
                }
            )
            engine = build_engine(fresh_model(model_dir), job, world, total_steps=TOTAL_STEPS)
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

    mp.spawn(
        _worker, args=(WORLD, free_port(), str(tiny_bert), str(tmp_path)), nprocs=WORLD, join=True
    )
    results = {(s, a): torch.load(tmp_path / f"{s}-{a}.pt", weights_only=True) for s, _, a in RUNS}
    initial, reference = plain_torch_reference(str(tiny_bert))
    moved = {name: float((reference[name] - initial[name]).abs().max()) for name in reference}
    # An attention key bias adds the same q.b to every score of a query: softmax cancels it, so
    # its gradient is zero and only weight-decay-free Adam noise moves it. Every other tensor
    # must move 100 x the tolerance, so "equal" cannot pass with weights that stayed put.
    trained = [name for name in moved if not name.endswith("attention.self.key.bias")]
    assert len(trained) > 30 and min(moved[n] for n in trained) > 1e-3, moved
    for key, result in results.items():
        assert result["lr"] == pytest.approx(0.01 * 8 / 10), key  # two steps of linear decay
        assert result["state"].keys() == reference.keys(), key
        for name, tensor in reference.items():
            torch.testing.assert_close(
                result["state"][name], tensor, rtol=0, atol=1e-5, msg=f"{key} {name}"
            )
