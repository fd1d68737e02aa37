"""Save and restore a training checkpoint: the engine's per-rank state plus ours.

Each rank writes, into the directory its CheckpointSink gives it, the engine's files (under
`engine.checkpoint_subdir`), its training progress with RNG states, and its share of the
best-so-far weights (the layout is in trainer/formats/checkpoints.py); the sink delivers them to
the head, where rank 0's state makes the commit atomic.

When some parameters are frozen (a PEFT method's base model), the engine leaves them out: they
are the base model's weights, rebuilt from model.path on resume and export, so a LoRA checkpoint
holds the adapter, the head and their optimizer state.
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
import torch.distributed as dist

from trainer.engines.base import Engine
from trainer.engines.safe_load import load_torch_file, refuse_unsafe_files
from trainer.engines.snapshot import Snapshot, reshard_snapshot
from trainer.formats.checkpoints import best_weights_file, rank_needs, step_tag, trainer_state_file
from trainer.loop.context import Run
from trainer.loop.progress import TrainProgress
from trainer.loop.reshard import engine_files, is_trainer_state, load_resharded, saved_world_size
from trainer.loop.saves import BackgroundSaves
from trainer.protocols import CheckpointSink


def rng_state() -> dict[str, Any]:
    kind, keys, pos, has_gauss, cached = cast(
        tuple[str, np.ndarray, int, int, float], np.random.get_state(legacy=True)
    )
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
    engine: Engine,
    tag: str,
    progress: dict[str, Any],
    best: Snapshot | None,
    sink: CheckpointSink,
    state: dict[str, Any],
    saves: BackgroundSaves | None = None,
) -> float:
    """Every rank saves its part and submits it; returns the seconds training was blocked.

    With `saves` (the one in flight waited for first: `saves.wait()`), the state is only copied
    into shared memory here; a saver process writes the files and they are submitted once
    durable. Without, they are written here. The transfer to the head and the atomic commit
    happen off the critical path either way (the head commits when all ranks' files have
    arrived); callers that need the checkpoint committed before going on (preemption, the end of
    training) call `saves.wait()` then `sink.wait_committed(tag, ...)`.
    """
    started = time.perf_counter()
    rank = dist.get_rank()
    local = sink.local_dir(tag)
    trainer_state = json.dumps(progress | {"rng": rng_state()}).encode()
    try:
        if saves is None:
            engine.save_state(local / engine.checkpoint_subdir)
            (local / trainer_state_file(rank)).write_bytes(trainer_state)
            if best is not None:
                torch.save(_flat(best), local / best_weights_file(rank))
        else:
            snapshot = saves.snapshot(local)
            engine.save_state(local / engine.checkpoint_subdir, snapshot)
            snapshot.add_bytes(trainer_state, local / trainer_state_file(rank))
            if best is not None:
                snapshot.add_torch(_flat(best), local / best_weights_file(rank))
            saves.start(tag, snapshot, state if rank == 0 else None)
    except Exception as exc:  # a full disk: torch reports it as RuntimeError, Python as OSError
        sink.abandon(tag, f"{type(exc).__name__}: {exc}".splitlines()[0])
        raise
    if saves is None:
        sink.submit(tag, local, state if rank == 0 else None)
    return time.perf_counter() - started


def _flat(best: Snapshot) -> list[torch.Tensor]:
    return [
        t for pair in best for t in (pair[0], pair[1] if pair[1] is not None else torch.empty(0))
    ]


def load_checkpoint(
    engine: Engine, tag: str, sink: CheckpointSink
) -> tuple[TrainProgress, Snapshot | None, int]:
    """Restore engine, RNG and progress from `tag`; returns (progress, best snapshot, the world
    size that wrote it). A checkpoint of another world size is resharded on the way in
    (trainer/loop/reshard.py); the progress is the same on every rank, so any rank's will do."""
    rank, world = dist.get_rank(), dist.get_world_size()
    saved_world = saved_world_size(_names(sink.fetch(tag, is_trainer_state)))
    if saved_world == world:
        local = sink.fetch(tag, lambda name: rank_needs(name, rank))
        refuse_unsafe_files(local, tag)
        engine.load_state(local / engine.checkpoint_subdir)
        best = _read_best(local / best_weights_file(rank))
    else:
        local = sink.fetch(tag, lambda name: engine_files(name) or _is_rank_file(name))
        refuse_unsafe_files(local, tag)
        load_resharded(engine, local / engine.checkpoint_subdir)
        shares = [_read_best(local / best_weights_file(r)) for r in range(saved_world)]
        best = (
            None
            if any(share is None for share in shares)
            else reshard_snapshot(engine.module, shares, rank)  # pyright: ignore[reportArgumentType] (checked for None above)
        )
    fields = json.loads((local / trainer_state_file(min(rank, saved_world - 1))).read_text())
    rng = fields.pop("rng")
    if rank < saved_world:
        set_rng_state(rng)
    # else: a rank the checkpoint did not have keeps the RNG seeded at setup
    return TrainProgress(**fields), best, saved_world


def _names(directory: Path) -> list[str]:
    return [p.relative_to(directory).as_posix() for p in directory.rglob("*") if p.is_file()]


def _is_rank_file(name: str) -> bool:
    return is_trainer_state(name) or (name.startswith("best_rank") and name.endswith(".pt"))


def _read_best(path: Path) -> Snapshot | None:
    if not path.is_file():
        return None
    flat = load_torch_file(path)  # plain tensors only: nothing else is unpickled
    return [(flat[i], flat[i + 1] if flat[i + 1].numel() else None) for i in range(0, len(flat), 2)]


def checkpoint_now(
    run: Run,
    progress: TrainProgress,
    best: Snapshot | None,
    event: str,
    already_saved: bool = False,
) -> str | None:
    """Save and commit a checkpoint of the current step (all ranks); rank 0 reports `event`.
    `already_saved`: this step's checkpoint was just saved (it is only waited for). Without a
    checkpoint sink (a plain local run) only the event is reported."""
    tag, blocked, overlap = None, 0.0, 0.0
    spec, checkpoints, saves = run.spec, run.io.checkpoints, run.saves
    if checkpoints is not None:
        tag = step_tag(progress.step)
        # The save in flight first: never two snapshots in memory at once.
        overlap = saves.wait() if saves is not None else 0.0
        if not already_saved:
            state = {
                "step": progress.step,
                "epoch": progress.epoch,
                "world_size": dist.get_world_size(),
                "samples_seen_in_epoch": progress.samples_seen_in_epoch,
                "config_fingerprint": spec.config_fingerprint,
                "spec": spec.model_dump(mode="json"),  # what export needs to rebuild the model
            }
            blocked = save_checkpoint(
                run.engine, tag, progress.state_dict(), best, checkpoints, state, saves
            )
        if event == "preempted":  # the launcher exits next: the checkpoint must be on the head
            if saves is not None:
                saves.wait()
            checkpoints.wait_committed(tag, spec.job.training.preemption_grace_s)
    record = {"event": event, "step": progress.step, "tag": tag, "blocked_s": blocked}
    run.report(record | {"save_overlap": overlap})
    return tag
