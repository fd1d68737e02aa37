"""`engine.backend: accelerate`: an `Accelerator` running DDP, FSDP (v2) or DeepSpeed's plugin.

Why CPU workers need care (accelerate 1.x, `accelerate/state.py`). Accelerate normally learns
the world from `accelerate launch`; under Ray Train the process group already exists and the
env holds RANK/WORLD_SIZE/LOCAL_RANK. `PartialState._prepare_backend` then picks a backend only
for an accelerator device (cuda, xpu, npu, ...). On a CPU-only worker it finds none, so
`backend` stays None, and "no backend" means `DistributedType.NO` with `num_processes = 1`,
even though torch.distributed has 2 ranks. Consequences, per strategy:

- deepspeed: the plugin still switches the type to DEEPSPEED, but Accelerate fills the batch
  sizes for 1 process while DeepSpeed counts 2 ranks: `train_batch_size is not equal to
  micro_batch_per_gpu * gradient_acc_step * world_size 8 != 8 * 1 * 2`. `cpu=True` avoids the
  error only because `AcceleratorState` ignores DeepSpeed when `cpu` is set (`... == "true" and
  not cpu`): it silently trains plain DDP. The fix is to name the backend the process group
  already uses, `InitProcessGroupKwargs(backend="gloo")`: `_prepare_backend` keeps it, so
  `num_processes` comes from `torch.distributed.get_world_size()` and the type is DEEPSPEED.
- ddp: with the gloo kwarg alone the type stays NO and `prepare` does not wrap the model in
  DDP (ranks would train apart, silently). `cpu=True` is Accelerate's own MULTI_CPU path: DDP.
- fsdp: `AcceleratorState` turns a plugin into FSDP only for GPU-like types; MULTI_CPU keeps
  the plugin unused and `prepare` returns DDP. FSDP2 (`fully_shard`) itself runs on CPU over
  gloo, so we take the MULTI_CPU state and select FSDP on it (`_select_fsdp`).

On GPU workers Accelerate's own detection is right (LOCAL_RANK + cuda: nccl) and none of this
applies. Whatever the path, `_check_ran_as_asked` fails loudly if the distributed type or the
process count is not what the config asked for, so a fallback can never pass as the real thing.

No ACCELERATE_* variables are set by us: the worker gets the validated spec and the standard
torch env, and everything Accelerate needs is passed as arguments. (Accelerate itself sets
ACCELERATE_USE_DEEPSPEED / ACCELERATE_USE_FSDP in os.environ when given a plugin; `destroy`
puts them back so a later Accelerator in the same process is not affected.)
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch
import torch.distributed as dist

from trainer.config.schema import EngineConfig, FsdpConfig, JobConfig
from trainer.engines.background import CheckpointSnapshot
from trainer.engines.base import build_optimizer, deepspeed_config, hidden_size_of
from trainer.engines.deepspeed import zero_consolidated_state_dict
from trainer.engines.safe_load import guard_deepspeed_loads, safe_dcp_loads
from trainer.formats.checkpoints import ACC_TAG

# Set by Accelerate itself when handed a plugin (the last one by the FSDP plugin's
# cpu_ram_efficient_loading); `destroy` restores them.
_ACCELERATE_FLAGS = (
    "ACCELERATE_USE_DEEPSPEED",
    "ACCELERATE_USE_FSDP",
    "FSDP_CPU_RAM_EFFICIENT_LOADING",
)


@dataclass(frozen=True)
class AcceleratePlan:
    """How to construct the Accelerator for a strategy on this kind of worker (pure data)."""

    strategy: str
    cpu: bool  # Accelerator(cpu=True): Accelerate's MULTI_CPU path
    process_group_backend: str | None  # InitProcessGroupKwargs(backend=...)
    select_fsdp: bool  # switch the MULTI_CPU state to FSDP after construction
    expected_type: str  # the DistributedType that must result


def accelerate_plan(engine: EngineConfig, on_gpu: bool) -> AcceleratePlan:
    """Pure: the Accelerator arguments for `engine.strategy` on a GPU or CPU worker."""
    s = engine.strategy
    if on_gpu:
        expected = {"ddp": "MULTI_GPU", "fsdp": "FSDP", "deepspeed": "DEEPSPEED"}[s]
        return AcceleratePlan(s, cpu=False, process_group_backend=None, select_fsdp=False,
                              expected_type=expected)  # fmt: skip
    if s == "deepspeed":
        return AcceleratePlan(s, False, "gloo", False, "DEEPSPEED")
    if s == "fsdp":
        return AcceleratePlan(s, True, None, True, "FSDP")
    return AcceleratePlan(s, True, None, False, "MULTI_CPU")


def fsdp_plugin_kwargs(fsdp: FsdpConfig, block_classes: list[str]) -> dict[str, Any]:
    """Pure: FullyShardedDataParallelPlugin arguments. FSDP2 (`fully_shard`), one unit per
    transformer block, sharded checkpoints (torch DCP). RAM-efficient loading: only rank 0 holds
    the loaded weights (the others built the model on the meta device, trainer/model/build.py);
    Accelerate sends each rank its shards after `fully_shard`."""
    return {
        "fsdp_version": 2,
        "cpu_ram_efficient_loading": True,
        "reshard_after_forward": True,
        "auto_wrap_policy": "transformer_based_wrap" if block_classes else None,
        "transformer_cls_names_to_wrap": block_classes or None,
        "cpu_offload": fsdp.cpu_offload,
        "state_dict_type": "SHARDED_STATE_DICT",
    }


def block_classes(model: torch.nn.Module) -> list[str]:
    """The transformer block classes to shard one by one: the model's `_no_split_modules`, minus
    any class that contains the input embedding. Accelerate shards the input embedding as a unit
    of its own afterwards, and sharding it twice fails (BERT lists `BertEmbeddings` there)."""
    base: Any = getattr(model, "get_base_model", lambda: model)()
    embedding = base.get_input_embeddings() if hasattr(base, "get_input_embeddings") else None
    names = set(getattr(base, "_no_split_modules", None) or [])
    holders = {
        type(m).__name__
        for m in base.modules()
        if embedding is not None and any(sub is embedding for sub in m.modules())
    }
    return sorted(names - holders)


def hybrid_mesh(world_size: int, workers_per_node: int) -> dict[str, int]:
    """Pure: hybrid sharding = shard within a node, replicate across nodes (2-D device mesh).

    Raises:
        ValueError: the workers do not split evenly into nodes.
    """
    if workers_per_node < 2 or world_size % workers_per_node:
        raise ValueError(
            "engine.fsdp.sharding: hybrid needs the same number (>= 2) of workers on every node "
            f"({world_size} workers, {workers_per_node} on this node); use sharding: full"
        )
    return {"dp_replicate_size": world_size // workers_per_node, "dp_shard_size": workers_per_node}


def deepspeed_plugin_config(
    job: JobConfig, world_size: int, hidden_size: int | None = None
) -> dict[str, Any]:
    """Pure: the same DeepSpeed config the deepspeed backend uses (so zero_stage/offload mean the
    same), given to Accelerate's DeepSpeedPlugin as `hf_ds_config`."""
    return deepspeed_config(job, world_size, hidden_size)


class AccelerateEngine:
    checkpoint_subdir = ACC_TAG

    def __init__(
        self, model: torch.nn.Module, job: JobConfig, world_size: int, total_steps: int
    ) -> None:
        from accelerate import Accelerator

        self._saved_flags = {k: os.environ.get(k) for k in _ACCELERATE_FLAGS}
        threads = torch.get_num_threads()  # MULTI_CPU may reset it from the core count
        plan = accelerate_plan(job.engine, torch.cuda.is_available())
        self.plan = plan
        kwargs = _accelerator_arguments(plan, job, world_size, model)
        mesh = kwargs.pop("parallelism_config", None) if plan.select_fsdp else None
        self.accelerator = Accelerator(
            gradient_accumulation_steps=job.training.grad_accum,
            # We step the schedule once per optimizer step; Accelerate's default steps it
            # num_processes times (it assumes a schedule sized by per-process batches).
            step_scheduler_with_optimizer=False,
            **kwargs,
        )
        if plan.select_fsdp:
            _select_fsdp(self.accelerator, kwargs["fsdp_plugin"], mesh)
        torch.set_num_threads(threads)
        _check_ran_as_asked(self.accelerator, plan, world_size)
        optimizer, scheduler = build_optimizer(model, job, total_steps)
        self.model, self.optimizer, self.scheduler = self.accelerator.prepare(
            model, optimizer, scheduler
        )
        if self._is_deepspeed():
            # With ZeRO-3 the plugin registers itself with transformers so that models built
            # from now on are partitioned at construction (zero.Init, a collective). Ours is
            # already built; left registered, rank 0 rebuilding the model alone to save it
            # would wait forever for the other ranks.
            from transformers.integrations.deepspeed import unset_hf_deepspeed_config

            unset_hf_deepspeed_config()
            guard_deepspeed_loads(self.model)  # DeepSpeed itself loads with weights_only=False
        self.module: torch.nn.Module = cast(
            torch.nn.Module, self.accelerator.unwrap_model(self.model)
        )
        self.device: torch.device = self.accelerator.device
        self._grad_clip = job.optim.grad_clip

    def _is_deepspeed(self) -> bool:
        return self.plan.expected_type == "DEEPSPEED"

    def __call__(self, **inputs: Any) -> Any:
        return self.model(**inputs)

    def accumulate(self):
        return self.accelerator.accumulate(self.model)

    def backward(self, loss: torch.Tensor) -> None:
        # Scales by 1/grad_accum (DeepSpeed: its engine does); under DeepSpeed also steps the
        # engine on the last micro-batch of an optimizer step.
        self.accelerator.backward(loss)

    def step(self) -> None:
        if not self.accelerator.sync_gradients:  # not the last micro-batch of the step
            return
        if self._grad_clip and not self._is_deepspeed():  # DeepSpeed clips inside its step
            self.accelerator.clip_grad_norm_(self.model.parameters(), self._grad_clip)
        self.optimizer.step()  # no-ops under DeepSpeed, whose engine already stepped
        self.scheduler.step()
        self.optimizer.zero_grad()

    def get_lr(self) -> list[float]:
        return self.scheduler.get_last_lr()

    def save_state(self, directory: Path, snapshot: CheckpointSnapshot | None = None) -> bool:
        # Accelerate writes its files itself (DCP under FSDP): not snapshotted, `snapshot` unused.
        directory.mkdir(parents=True, exist_ok=True)  # every rank: scratch dirs are node-local
        self.accelerator.save_state(str(directory))
        return False

    def load_state(self, directory: Path) -> None:
        # weights_only for Accelerate's own files (its default, made explicit); DCP's metadata
        # and non-tensor entries (FSDP) through the restricted reader and planner.
        with safe_dcp_loads():
            self.accelerator.load_state(str(directory), load_kwargs={"weights_only": True})

    def consolidated_state_dict(self) -> dict[str, torch.Tensor] | None:
        if self._is_deepspeed():
            return zero_consolidated_state_dict(self.model)
        state: dict[str, torch.Tensor] = self.accelerator.get_state_dict(self.model)  # pyright: ignore[reportAssignmentType] (typed as any pytree; it is the model's state dict)
        if dist.get_rank() != 0:
            return None
        return {k: v.detach().cpu().clone() for k, v in state.items()}

    def describe(self) -> dict[str, Any]:
        return {
            "backend": "accelerate",
            "strategy": self.plan.strategy,
            "distributed_type": self.accelerator.distributed_type.value,
            "num_processes": self.accelerator.num_processes,
        }

    def destroy(self) -> None:
        from accelerate.state import AcceleratorState

        if self._is_deepspeed():
            self.model.destroy()
        self.accelerator.free_memory()
        AcceleratorState._reset_state(reset_partial_state=True)
        for key, value in self._saved_flags.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _accelerator_arguments(
    plan: AcceleratePlan, job: JobConfig, world: int, model: torch.nn.Module
) -> dict[str, Any]:
    from accelerate.utils import (
        DeepSpeedPlugin,
        FullyShardedDataParallelPlugin,
        InitProcessGroupKwargs,
    )

    kwargs: dict[str, Any] = {"cpu": plan.cpu}
    if plan.process_group_backend:
        kwargs["kwargs_handlers"] = [InitProcessGroupKwargs(backend=plan.process_group_backend)]
    if plan.strategy == "deepspeed":
        kwargs["deepspeed_plugin"] = DeepSpeedPlugin(
            hf_ds_config=deepspeed_plugin_config(job, world, hidden_size_of(model))
        )
    elif plan.strategy == "fsdp":
        fsdp = job.engine.fsdp_options()
        blocks = block_classes(model)
        kwargs["fsdp_plugin"] = FullyShardedDataParallelPlugin(**fsdp_plugin_kwargs(fsdp, blocks))
        if fsdp.sharding == "hybrid":
            from accelerate.parallelism_config import ParallelismConfig

            per_node = int(os.environ.get("LOCAL_WORLD_SIZE", world))
            mesh = hybrid_mesh(world, per_node)
            kwargs["parallelism_config"] = ParallelismConfig(
                dp_replicate_size=mesh["dp_replicate_size"], dp_shard_size=mesh["dp_shard_size"]
            )
    return kwargs


def _select_fsdp(accelerator: Any, plugin: Any, mesh: Any) -> None:
    """CPU only: FSDP on Accelerate's MULTI_CPU state (see the module docstring for why). A
    hybrid-sharding mesh is attached afterwards too: `Accelerator.__init__` validates it against
    the distributed type, which is FSDP only from here on."""
    from accelerate.state import PartialState
    from accelerate.utils import DistributedType

    accelerator.state.distributed_type = DistributedType.FSDP
    accelerator.state.fsdp_plugin = plugin
    PartialState._shared_state["distributed_type"] = DistributedType.FSDP
    if mesh is not None:  # the same two steps as Accelerator.__init__
        accelerator.state.parallelism_config = mesh
        accelerator.state.device_mesh = mesh.get_device_mesh(accelerator.device.type)
        mesh._validate_accelerator(accelerator)


def _check_ran_as_asked(accelerator: Any, plan: AcceleratePlan, world_size: int) -> None:
    got = accelerator.distributed_type.value
    if got != plan.expected_type or accelerator.num_processes != world_size:
        raise RuntimeError(
            f"engine.strategy: asked for {plan.strategy} on {world_size} workers, but Accelerate "
            f"set up {got} with {accelerator.num_processes} processes"
        )
