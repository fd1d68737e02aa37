"""Save and restore a training checkpoint: DeepSpeed's per-rank state plus ours.

Each rank writes, into the directory its CheckpointSink gives it:
  ds/...                         DeepSpeed's engine state (model states on rank 0, ZeRO shards per rank)
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
import time
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from trainer.protocols import CheckpointSink
from trainer.snapshot import Snapshot

DS_TAG = "ds"
MODEL_STATES = f"{DS_TAG}/mp_rank_00_model_states.pt"


def rank_needs(name: str, rank: int) -> bool:
    """Whether rank `rank` needs checkpoint file `name` to resume (DeepSpeed opens only its own
    ZeRO shard, plus rank 0's model states)."""
    return (
        name == MODEL_STATES
        or (name.startswith(f"{DS_TAG}/") and f"zero_pp_rank_{rank}_" in name)
        or name in (f"trainer_state_rank{rank}.json", f"best_rank{rank}.pt")
    )


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
    """Collective: every rank saves its part, then rank 0 commits. Returns seconds blocked."""
    started = time.perf_counter()
    rank = dist.get_rank()
    local = sink.local_dir(tag)
    frozen = has_frozen(engine)
    if frozen:
        _drop_frozen_aliases(engine)
    engine.save_checkpoint(str(local), tag=DS_TAG, exclude_frozen_parameters=frozen)
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
    sink.upload(tag, local)
    dist.barrier()  # every rank's files are on the head before rank 0 commits
    if rank == 0:
        sink.commit(tag, state)
    dist.barrier()  # nobody runs ahead of a checkpoint that is not committed yet
    return time.perf_counter() - started


def load_checkpoint(
    engine, tag: str, sink: CheckpointSink
) -> tuple[dict[str, Any], Snapshot | None]:
    """Restore engine, RNG and progress from `tag`; returns (progress fields, best snapshot)."""
    rank = dist.get_rank()
    local = sink.fetch(tag, lambda name: rank_needs(name, rank))
    path, _ = engine.load_checkpoint(
        str(local),
        tag=DS_TAG,
        load_optimizer_states=True,
        load_lr_scheduler_states=True,
        # Frozen weights are not in the checkpoint; they are already the base model's.
        load_module_strict=not has_frozen(engine),
    )
    if path is None:
        raise RuntimeError(f"{tag}: DeepSpeed found no checkpoint in {local}")
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


def has_frozen(engine) -> bool:
    return any(not p.requires_grad for p in engine.module.parameters())


def _drop_frozen_aliases(engine) -> None:
    """DeepSpeed drops frozen weights by the one name `named_parameters()` gives each; a module
    reachable under two names keeps its second copy. peft's prompt learning does that (the base's
    word embeddings are also `word_embeddings`), which would put the whole embedding matrix back
    in every checkpoint. Wrap the engine's module_state_dict once to drop every frozen name."""
    if getattr(engine, "_ftl_drops_frozen_aliases", False):
        return
    original = engine.module_state_dict
    frozen = {
        name
        for name, param in engine.module.named_parameters(remove_duplicate=False)
        if not param.requires_grad
    }

    def module_state_dict(*args: Any, exclude_frozen_parameters: bool = False, **kwargs: Any):
        state = original(*args, exclude_frozen_parameters=exclude_frozen_parameters, **kwargs)
        if exclude_frozen_parameters:
            for name in frozen & set(state):
                del state[name]
        return state

    engine.module_state_dict = module_state_dict
    engine._ftl_drops_frozen_aliases = True


def checkpoint_due(checkpoint_every: int | str | None, step: int, end_of_epoch: bool) -> bool:
    if checkpoint_every is None:
        return False
    return end_of_epoch if checkpoint_every == "epoch" else step % checkpoint_every == 0
