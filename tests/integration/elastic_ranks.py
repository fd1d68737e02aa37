"""Rank bodies for tests/integration/test_elastic_resume.py (targets of torch.multiprocessing).

Each spawned group runs every engine in turn on one process group, so the import cost of torch,
DeepSpeed and Accelerate is paid once per world size. The state each engine holds is read back
with the engine's own accessors (DeepSpeed's `safe_get_full_*`, FSDP2's `full_tensor`, plain
tensors for DDP), never with ftlaunch's checkpoint readers, so it is an independent reference.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

ENGINES = {
    "zero0": {"backend": "deepspeed", "zero_stage": 0},
    "zero1": {"backend": "deepspeed", "zero_stage": 1},
    "zero2": {"backend": "deepspeed", "zero_stage": 2},
    "zero3": {"backend": "deepspeed", "zero_stage": 3},
    "ddp": {"backend": "accelerate", "strategy": "ddp"},
    "fsdp": {"backend": "accelerate", "strategy": "fsdp"},
}
GLOBAL_BATCH = 12  # micro 2: grad_accum 6 on 1 worker, 3 on 2, 2 on 3
STEPS = 2


def job_for(engine: dict[str, Any], world: int) -> Any:
    from trainer.config import JobConfig

    job = JobConfig.model_validate(
        {
            "model": {"path": "unused"},
            "data": {"train": "x", "validation": "y", "test": "z"},
            "training": {"micro_batch_size": 2, "grad_accum": GLOBAL_BATCH // 2},
            "optim": {"lr": 0.01, "warmup_ratio": 0.0},
            "engine": engine,
            "cluster": {"num_workers": 1},
        }
    )
    return job.at_world_size(world)


def tiny_model() -> Any:
    """The tiny BERT of tests/fixtures.py with a 64-word vocabulary: no file, no tokenizer."""
    import torch
    from transformers import BertForSequenceClassification

    from tests.fixtures import tiny_bert_config

    torch.manual_seed(0)
    config = tiny_bert_config(vocab_size=64, max_position_embeddings=16, num_labels=2)
    return BertForSequenceClassification(config)


def weights(engine: Any) -> dict[str, Any]:
    """Collective: the module's full weights, copied (on one rank ZeRO-3 hands out the live
    parameters, which restoring the best weights would then overwrite)."""
    state = engine.consolidated_state_dict() or {}  # only rank 0 holds them
    return {name: tensor.clone() for name, tensor in state.items()}


def full_state(engine: Any, name: str) -> dict[str, list[Any]]:
    """Collective: name -> [fp32 weight, exp_avg, exp_avg_sq], whole, on every rank."""
    import torch

    state = {}
    if name in ("zero1", "zero2"):
        # DeepSpeed links each parameter to its optimizer state after the first group's first
        # step, before the other groups have state (deepspeed 0.19.8, stage_1_and_2.py); link
        # again now that every group has it, so `safe_get_full_optimizer_state` sees all.
        optimizer = engine.engine.optimizer
        optimizer._hp_optimizer_states_linked = False
        optimizer._lazy_init_hp_params_optimizer_state()
    for param_name, param in engine.module.named_parameters():
        if name in ("zero1", "zero2", "zero3"):
            from deepspeed.utils import safe_get_full_fp32_param, safe_get_full_optimizer_state

            values = [safe_get_full_fp32_param(param)] + [
                safe_get_full_optimizer_state(param, key) for key in ("exp_avg", "exp_avg_sq")
            ]
        else:  # ZeRO 0 runs the torch optimizer as it is; Accelerate wraps it once
            optimizer = engine.engine.optimizer if name == "zero0" else engine.optimizer.optimizer
            moments = optimizer.state[param]
            values = [param.data, moments["exp_avg"], moments["exp_avg_sq"]]
            values = [v.full_tensor() if hasattr(v, "full_tensor") else v for v in values]
        state[param_name] = [torch.as_tensor(v).detach().cpu().clone() for v in values]
    return state


def adam_steps(engine: Any, name: str) -> list[float]:
    """The step counts in the torch optimizer's state (one per parameter or flat partition)."""
    if name == "zero0":
        optimizer = engine.engine.optimizer
    elif name.startswith("zero"):
        optimizer = engine.engine.optimizer.optimizer
    else:
        optimizer = engine.optimizer.optimizer
    return sorted({float(state["step"]) for state in optimizer.state.values() if "step" in state})


def _train(engine: Any, steps: int, grad_accum: int, rank: int) -> None:
    import torch

    generator = torch.Generator().manual_seed(100 + rank)
    for _ in range(steps * grad_accum):
        with engine.accumulate():
            ids = torch.randint(0, 64, (2, 8), generator=generator)
            labels = torch.randint(0, 2, (2,), generator=generator)
            loss = engine(input_ids=ids, labels=labels).loss
            engine.backward(loss)
            engine.step()


def save_then_reload(rank: int, world: int, port: int, root: str, source: str, tag: str) -> None:
    """For every engine: load `source`'s checkpoint (resharded from its world size) or, without
    one, train; record the engine's full state; save it again as `tag` at this world size; then
    record the best weights the loaded snapshot restores."""
    import torch
    import torch.distributed as dist

    from tests.fixtures import init_gloo_group
    from trainer.engines import build_engine
    from trainer.engines.snapshot import capture_weights, restore_weights
    from trainer.local import LocalCheckpointSink
    from trainer.loop.checkpoints import load_checkpoint, save_checkpoint
    from trainer.loop.progress import TrainProgress

    init_gloo_group(rank, world, port)
    try:
        for name, engine_config in ENGINES.items():
            job = job_for(engine_config, world)
            engine = build_engine(tiny_model(), job, world, total_steps=10)
            sink = LocalCheckpointSink(Path(root) / name, keep_last=5)
            report: dict[str, Any] = {"world": world, "grad_accum": job.training.grad_accum}
            if source:
                progress, best, report["saved_world"] = load_checkpoint(engine, source, sink)
            else:
                report["initial"] = weights(engine)
                _train(engine, 1, job.training.grad_accum, rank)
                best = capture_weights(engine.module)
                report["best"] = weights(engine)
                _train(engine, STEPS - 1, job.training.grad_accum, rank)
                progress = TrainProgress(
                    step=STEPS, micro_steps_in_epoch=7, samples_seen_in_epoch=24
                )
            report["progress"] = progress.state_dict()
            report["state"] = full_state(engine, name)
            report["weights"] = weights(engine)
            report["adam_steps"] = adam_steps(engine, name)
            state = {"step": STEPS, "world_size": world, "config_fingerprint": ""}
            save_checkpoint(engine, tag, progress.state_dict(), best, sink, state)
            if source:
                restore_weights(engine.module, best or [])
                report["best"] = weights(engine)
            if rank == 0:
                torch.save(report, Path(root) / f"{name}-{tag}.pt")
            engine.destroy()
            dist.barrier()
    finally:
        dist.destroy_process_group()
