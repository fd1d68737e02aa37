"""Training engines: DeepSpeed's own engine or Accelerate (DDP, FSDP, DeepSpeed's plugin).

base.py        the Engine protocol, optimizer + schedule, the DeepSpeed config (pure)
deepspeed.py   engine.backend: deepspeed
accelerate.py  engine.backend: accelerate
snapshot.py    the best weights kept in memory, per rank (ZeRO-3 / FSDP partitions)
snapshot_pool.py  a checkpoint's files copied into reused shared memory, as torch.save records
background.py  one rank's saver process: hand it a snapshot, wait until it is durable
saver.py       the saver process itself (writes and fsyncs from shared memory, no unpickling)
"""

from __future__ import annotations

import torch

from trainer.config.schema import JobConfig
from trainer.engines.base import Engine


def build_engine(
    model: torch.nn.Module, job: JobConfig, world_size: int, total_steps: int
) -> Engine:
    """The engine named by `engine.backend`, wrapping `model` with its optimizer and schedule."""
    if job.engine.backend == "accelerate":
        from trainer.engines.accelerate import AccelerateEngine

        return AccelerateEngine(model, job, world_size, total_steps)
    from trainer.engines.deepspeed import DeepSpeedEngine

    return DeepSpeedEngine(model, job, world_size, total_steps)
