"""`engine.backend: deepspeed`: DeepSpeed's own engine (ZeRO 0-3, gloo on CPU, NCCL on GPU)."""

from __future__ import annotations

import contextlib
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import deepspeed
import torch

from trainer.checkpointing import DS_TAG
from trainer.config.schema import JobConfig
from trainer.engine import build_optimizer, deepspeed_config


class DeepSpeedEngine:
    """A thin adapter: every call goes straight to `deepspeed.DeepSpeedEngine`."""

    checkpoint_subdir = DS_TAG

    def __init__(
        self, model: torch.nn.Module, job: JobConfig, world_size: int, total_steps: int
    ) -> None:
        optimizer, scheduler = build_optimizer(model, job, total_steps)
        self.engine, _, _, _ = deepspeed.initialize(
            model=model,
            optimizer=optimizer,
            lr_scheduler=scheduler,
            config=deepspeed_config(job, world_size),
        )
        self.module = self.engine.module
        self.device = self.engine.device
        self._world_size = world_size

    def __call__(self, **inputs: Any) -> Any:
        return self.engine(**inputs)

    def accumulate(self) -> AbstractContextManager[None]:
        return contextlib.nullcontext()  # DeepSpeed tracks the accumulation boundary itself

    def backward(self, loss: torch.Tensor) -> None:
        self.engine.backward(loss)

    def step(self) -> None:
        self.engine.step()

    def get_lr(self) -> list[float]:
        return self.engine.get_lr()

    def save_state(self, directory: Path) -> None:
        # DeepSpeed appends the tag: files land in <checkpoint>/ds/.
        self.engine.save_checkpoint(str(directory.parent), tag=directory.name)

    def load_state(self, directory: Path) -> None:
        path, _ = self.engine.load_checkpoint(
            str(directory.parent),
            tag=directory.name,
            load_optimizer_states=True,
            load_lr_scheduler_states=True,
        )
        if path is None:
            raise RuntimeError(f"DeepSpeed found no checkpoint in {directory}")

    def consolidated_state_dict(self) -> dict[str, torch.Tensor] | None:
        return zero_consolidated_state_dict(self.engine)

    def describe(self) -> dict[str, Any]:
        return {
            "backend": "deepspeed",
            "strategy": "deepspeed",
            "distributed_type": "DEEPSPEED",
            "num_processes": self._world_size,
        }

    def destroy(self) -> None:
        self.engine.destroy()


def zero_consolidated_state_dict(engine) -> dict[str, torch.Tensor] | None:
    """The full model state of a DeepSpeed engine on rank 0 (None elsewhere). Collective under
    ZeRO-3: call on all ranks."""
    if engine.zero_optimization_partition_weights():
        return engine._zero3_consolidated_16bit_state_dict()
    if torch.distributed.get_rank() == 0:
        return {k: v.detach().cpu().clone() for k, v in engine.module.state_dict().items()}
    return None
