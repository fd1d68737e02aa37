"""Save and restore a training checkpoint: the engine's per-rank state plus ours.

Each rank writes, into the directory its CheckpointSink gives it:
  ds/...                         engine.backend deepspeed: DeepSpeed's engine state (model states
                                 on rank 0, ZeRO shards per rank)
  acc/...                        engine.backend accelerate: `Accelerator.save_state` (see rank_needs)
  trainer_state_rank{R}.json     TrainProgress, including the data-stream position and RNG states
  best_rank{R}.pt                this rank's share of the best-so-far weights (plain tensors)
and the sink delivers them to the head, where rank 0 commits them atomically.

When some parameters are frozen (a PEFT method's base model), DeepSpeed is told to leave them out
(`exclude_frozen_parameters`): they are the base model's weights, rebuilt from model.path on
resume and export, so a LoRA checkpoint holds the adapter, the head and their optimizer state.
"""

from __future__ import annotations

import json
import random
import re
import time
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from trainer.protocols import CheckpointSink
from trainer.snapshot import Snapshot

DS_TAG = "ds"
ACC_TAG = "acc"
MODEL_STATES = f"{DS_TAG}/mp_rank_00_model_states.pt"
_PER_RANK = (
    re.compile(r"zero_pp_rank_(\d+)_"),  # a ZeRO shard (deepspeed, or deepspeed via accelerate)
    re.compile(r"random_states_(\d+)\.pkl$"),  # Accelerate's per-process RNG state
)


def rank_needs(name: str, rank: int) -> bool:
    """Whether rank `rank` needs checkpoint file `name` to resume.

    DeepSpeed opens only its own ZeRO shard, plus rank 0's model states. Accelerate's layout:
      acc/model.safetensors, optimizer.bin, scheduler.bin   DDP: full states, read by every rank
      acc/pytorch_model/...                                 DeepSpeed via Accelerate: as ds/ above
      acc/pytorch_model_fsdp_0/, acc/optimizer_0/           FSDP: torch DCP, `__R_0.distcp` per rank
      acc/random_states_R.pkl                               per rank
    A DCP directory is fetched whole by every rank: DCP stores a replicated entry (the optimizer
    step count, param groups) once, in whichever rank's file balances the sizes, so a rank may
    read from files other than its own.
    """
    if name in (f"trainer_state_rank{rank}.json", f"best_rank{rank}.pt"):
        return True
    if name.startswith(f"{DS_TAG}/"):
        return name == MODEL_STATES or f"zero_pp_rank_{rank}_" in name
    if name.startswith(f"{ACC_TAG}/"):
        for pattern in _PER_RANK:
            match = pattern.search(name)
            if match:
                return int(match.group(1)) == rank
        return not name.endswith("/latest")  # DeepSpeed's pointer file; we load by tag
    return False


def rng_state() -> dict[str, Any]:
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "python": [random.getstate()[0], list(random.getstate()[1]), random.getstate()[2]],
        "numpy": [kind, keys.tolist(), pos, has_gauss, cached],
        "torch": torch.get_rng_state().tolist(),
    }


def set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))


def save_checkpoint(
    engine,
    tag: str,
    progress: dict[str, Any],
    best: Snapshot | None,
    sink: CheckpointSink,
    state: dict[str, Any],
) -> float:
    """Every rank saves its part locally and submits it; returns the seconds training was blocked.

    The transfer to the head and the atomic commit happen off the critical path (the head commits
    when all ranks' files have arrived); callers that need the checkpoint committed before going
    on (preemption, the end of training) call `sink.wait_committed(tag, ...)`.
    """
    started = time.perf_counter()
    rank = dist.get_rank()
    local = sink.local_dir(tag)
    engine.save_state(local / engine.checkpoint_subdir)
    (local / f"trainer_state_rank{rank}.json").write_text(
        json.dumps(progress | {"rng": rng_state()})
    )
    if best is not None:
        flat = [
            t
            for pair in best
            for t in (pair[0], pair[1] if pair[1] is not None else torch.empty(0))
        ]
        torch.save(flat, local / f"best_rank{rank}.pt")
    sink.submit(tag, local, state if rank == 0 else None)
    return time.perf_counter() - started


def load_checkpoint(
    engine, tag: str, sink: CheckpointSink
) -> tuple[dict[str, Any], Snapshot | None]:
    """Restore engine, RNG and progress from `tag`; returns (progress fields, best snapshot)."""
    rank = dist.get_rank()
    local = sink.fetch(tag, lambda name: rank_needs(name, rank))
    engine.load_state(local / engine.checkpoint_subdir)
    progress = json.loads((local / f"trainer_state_rank{rank}.json").read_text())
    set_rng_state(progress.pop("rng"))
    best_file = local / f"best_rank{rank}.pt"
    best = None
    if best_file.is_file():
        flat = torch.load(best_file, weights_only=True)  # plain tensors only: nothing to unpickle
        best = [
            (flat[i], flat[i + 1] if flat[i + 1].numel() else None) for i in range(0, len(flat), 2)
        ]
    return progress, best


def checkpoint_due(checkpoint_every: int | str | None, step: int, end_of_epoch: bool) -> bool:
    if checkpoint_every is None:
        return False
    return end_of_epoch if checkpoint_every == "epoch" else step % checkpoint_every == 0
