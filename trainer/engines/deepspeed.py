"""`engine.backend: deepspeed`: DeepSpeed's own engine (ZeRO 0-3, gloo on CPU, NCCL on GPU)."""

from __future__ import annotations

import contextlib
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, TypeAlias, cast

import deepspeed
import torch

from trainer.config.schema import JobConfig
from trainer.engines.background import CheckpointSnapshot
from trainer.engines.base import build_optimizer, deepspeed_config, hidden_size_of
from trainer.engines.safe_load import guard_deepspeed_loads
from trainer.formats.checkpoints import DS_TAG

# A `deepspeed.DeepSpeedEngine`: an nn.Module whose attributes (`module`, ZeRO helpers) torch's
# `__getattr__` typing cannot describe, so it is not checked through this name.
DeepSpeedModel: TypeAlias = Any


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
            lr_scheduler=scheduler,  # pyright: ignore[reportArgumentType] (annotated with torch's private _LRScheduler; any LRScheduler works)
            config=deepspeed_config(job, world_size, hidden_size_of(model)),
        )
        guard_deepspeed_loads(self.engine)  # DeepSpeed itself loads with weights_only=False
        self._checkpoints = SnapshotCheckpointEngine(self.engine.checkpoint_engine)
        self.engine.checkpoint_engine = self._checkpoints  # pyright: ignore[reportAttributeAccessIssue] (DeepSpeed's hook, typed as its own engines only)
        self.module: torch.nn.Module = cast(torch.nn.Module, self.engine.module)
        self.device: torch.device = cast(torch.device, self.engine.device)
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

    def save_state(self, directory: Path, snapshot: CheckpointSnapshot | None = None) -> bool:
        # DeepSpeed appends the tag: files land in <checkpoint>/ds/. Frozen weights (a PEFT
        # method's base model) are left out: they are rebuilt from model.path on resume/export.
        frozen = has_frozen(self.engine)
        if frozen:
            _drop_frozen_aliases(self.engine)
        self._checkpoints.snapshot = snapshot
        try:
            self.engine.save_checkpoint(
                str(directory.parent), tag=directory.name, exclude_frozen_parameters=frozen
            )
        finally:
            self._checkpoints.snapshot = None
        return snapshot is not None

    def load_state(self, directory: Path) -> None:
        path, _ = self.engine.load_checkpoint(
            str(directory.parent),
            tag=directory.name,
            load_optimizer_states=True,
            load_lr_scheduler_states=True,
            # Frozen weights are not in the checkpoint; they are already the base model's.
            load_module_strict=not has_frozen(self.engine),
        )
        if path is None:
            raise RuntimeError(f"DeepSpeed found no checkpoint in {directory}")

    def load_universal_state(self, directory: Path) -> None:
        """Collective: restore from DeepSpeed's universal layout (one full tensor per parameter,
        written by trainer/loop/reshard.py from a checkpoint of another world size); DeepSpeed
        partitions it for this world size. Its `checkpoint.load_universal` switch is read at
        load time, so it is turned on for this one load."""
        config = self.engine._config
        if config is None:
            raise RuntimeError("DeepSpeed engine has no config to load a universal checkpoint with")
        config.load_universal_checkpoint = True
        try:
            self.load_state(directory)
        finally:
            config.load_universal_checkpoint = False

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


class SnapshotCheckpointEngine:
    """DeepSpeed's checkpoint engine (its `checkpoint_engine` hook), with every file it saves
    copied into `snapshot` while one is set, for the saver process to write; everything else
    (loads, directories, commit) goes to the engine it wraps."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.snapshot: CheckpointSnapshot | None = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def save(self, state_dict: Any, path: str) -> None:
        if self.snapshot is None:
            self._inner.save(state_dict, path)
        else:
            self.snapshot.add_torch(state_dict, Path(path))

    def preserves_storage_sharing(self) -> bool:
        # True makes DeepSpeed clone every tensor before `save`; the snapshot copies compactly.
        return self.snapshot is None and self._inner.preserves_storage_sharing()


def zero_consolidated_state_dict(
    engine: DeepSpeedModel,
) -> dict[str, torch.Tensor] | None:
    """The full model state of a DeepSpeed engine on rank 0 (None elsewhere). Collective under
    ZeRO-3: call on all ranks."""
    if engine.zero_optimization_partition_weights():
        return engine._zero3_consolidated_16bit_state_dict()
    if torch.distributed.get_rank() == 0:
        return {k: v.detach().cpu().clone() for k, v in engine.module.state_dict().items()}
    return None


def has_frozen(engine: DeepSpeedModel) -> bool:
    return any(not p.requires_grad for p in engine.module.parameters())


def _drop_frozen_aliases(engine: DeepSpeedModel) -> None:
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
