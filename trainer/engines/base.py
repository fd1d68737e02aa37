"""The engine seam: what the training loop needs from DeepSpeed or Accelerate.

Both adapters (trainer/engines/deepspeed.py, trainer/engines/accelerate.py) import this module
and get the same optimizer, parameter groups, schedule and DeepSpeed config from here, so switching
backends changes how the model is sharded, not what is optimised. Task-agnostic: the engine sees
a model and a loss, never a task.
"""

from __future__ import annotations

import math
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import torch

from trainer.config.errors import UnsupportedConfigError
from trainer.config.schema import JobConfig, OptimConfig

if TYPE_CHECKING:
    from trainer.engines.background import CheckpointSnapshot

NO_DECAY_MARKERS = ("bias", "LayerNorm.weight", "layer_norm.weight", "norm.weight")


class Engine(Protocol):
    """One training engine on one rank. Methods marked collective must be called on every rank."""

    @property
    def module(self) -> torch.nn.Module:
        """The unwrapped model: parameters, train()/eval()."""
        ...

    @property
    def device(self) -> torch.device: ...

    @property
    def checkpoint_subdir(self) -> str:
        """Where this engine's files live inside a checkpoint directory."""
        ...

    def __call__(self, **inputs: Any) -> Any:
        """Forward pass through the (wrapped) model."""
        ...

    def accumulate(self) -> AbstractContextManager[None]:
        """Context around one micro-step (forward, backward, step): lets the engine skip the
        gradient all-reduce on micro-batches that do not end an optimizer step."""
        ...

    def backward(self, loss: torch.Tensor) -> None: ...

    def step(self) -> None:
        """Called after every micro-batch; the optimizer steps on the last of `grad_accum`."""
        ...

    def get_lr(self) -> list[float]: ...

    def save_state(self, directory: Path, snapshot: CheckpointSnapshot | None = None) -> bool:
        """Collective: write model, optimizer and schedule state (this rank's part) to `directory`.
        With `snapshot`, an engine that can copies its files into it instead (a saver process
        writes them) and returns True; False: it wrote them itself."""
        ...

    def load_state(self, directory: Path) -> None:
        """Collective: restore what `save_state` wrote."""
        ...

    def consolidated_state_dict(self) -> dict[str, torch.Tensor] | None:
        """Collective: the full model state on rank 0, None elsewhere."""
        ...

    def describe(self) -> dict[str, Any]:
        """What actually runs: backend, strategy, distributed type and process count."""
        ...

    def destroy(self) -> None: ...


def deepspeed_config(
    job: JobConfig, world_size: int, hidden_size: int | None = None
) -> dict[str, Any]:
    """The DeepSpeed config dict for this job (pure; unit-tested). With the model's hidden size
    the communication buckets are scaled to the model (EngineConfig.zero_buckets); without it
    DeepSpeed's defaults apply."""
    t, e = job.training, job.engine
    zero: dict[str, Any] = {"stage": e.zero_stage}
    if hidden_size and e.zero_stage > 0:
        zero |= e.zero_buckets(hidden_size)
    if e.offload == "cpu":
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": torch.cuda.is_available()}
    return precision_config(t.precision) | {
        "train_micro_batch_size_per_gpu": t.micro_batch_size,
        "gradient_accumulation_steps": t.grad_accum,
        "train_batch_size": t.micro_batch_size * t.grad_accum * world_size,
        "gradient_clipping": job.optim.grad_clip,
        "zero_optimization": zero,
        # We pass torch's AdamW; DeepSpeed's CPU Adam needs a C++ build and only pays off on GPU hosts.
        "zero_allow_untested_optimizer": True,
        "zero_force_ds_cpu_optimizer": False,
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }


def hidden_size_of(model: torch.nn.Module) -> int | None:
    """The model's hidden size from its transformers config (peft wrappers forward `config`)."""
    value = getattr(getattr(model, "config", None), "hidden_size", None)
    return value if isinstance(value, int) else None


def precision_config(precision: str) -> dict[str, Any]:
    """DeepSpeed's mixed-precision sections: fp32 master weights and optimizer state either way."""
    return {
        "bf16": {"enabled": precision == "bf16"},
        # loss_scale 0: dynamic loss scaling, which fp16 needs to keep small gradients.
        "fp16": {"enabled": precision == "fp16", "loss_scale": 0},
    }


def check_precision(precision: str) -> None:
    """Raise UnsupportedConfigError if this worker cannot compute in `precision`."""
    if precision == "fp32":
        return
    if torch.cuda.is_available():
        if precision == "bf16" and not torch.cuda.is_bf16_supported():
            raise UnsupportedConfigError("training.precision: bf16 is not supported by this GPU")
        return
    if precision == "fp16":
        raise UnsupportedConfigError(
            "training.precision: fp16 needs a GPU and this worker has none; use bf16 or fp32"
        )
    try:
        probe = torch.ones(2, 2, dtype=torch.bfloat16, requires_grad=True)
        (probe @ probe).sum().backward()
    except RuntimeError as exc:
        raise UnsupportedConfigError(
            f"training.precision: bf16 is not supported on this CPU by torch {torch.__version__} ({exc})"
        ) from None


def lr_lambda(total_steps: int, warmup_steps: int, schedule: str):
    """Multiplier of the base lr at optimizer step s: linear warmup, then linear or cosine decay
    to 0 at `total_steps`, or constant."""

    def factor(step: int) -> float:
        if warmup_steps and step < warmup_steps:
            return (step + 1) / warmup_steps
        if schedule == "constant":
            return 1.0
        remaining = max(total_steps - step, 0) / max(total_steps - warmup_steps, 1)
        if schedule == "cosine":  # half a period: 1 right after warmup, 0 at the last step
            return 0.5 * (1.0 - math.cos(math.pi * remaining))
        return remaining

    return factor


def build_optimizer(
    model: torch.nn.Module, job: JobConfig, total_steps: int
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """`optim.name` (no weight decay on biases and norms) and the warmup/decay schedule.

    Raises:
        UnsupportedConfigError: adamw_8bit without bitsandbytes on this worker.
    """
    o = job.optim
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (no_decay if any(m in name for m in NO_DECAY_MARKERS) else decay).append(param)
    groups = [
        {"params": decay, "weight_decay": o.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    optimizer = make_optimizer([g for g in groups if g["params"]], o)
    warmup = round(o.warmup_ratio * total_steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_lambda(total_steps, warmup, o.schedule)
    )
    return optimizer, scheduler


def make_optimizer(groups: list[dict[str, Any]], o: OptimConfig) -> torch.optim.Optimizer:
    """The optimizer `optim.name` names, over parameter groups.

    Raises:
        UnsupportedConfigError: adamw_8bit without bitsandbytes on this worker.
    """
    if o.name == "sgd":
        return torch.optim.SGD(groups, lr=o.lr, momentum=o.momentum)
    if o.name == "adamw_8bit":
        try:
            import bitsandbytes  # pyright: ignore[reportMissingImports] (optional)
        except ImportError:
            raise UnsupportedConfigError(
                "optim.name: adamw_8bit needs bitsandbytes on every worker "
                "(pip install bitsandbytes)"
            ) from None
        return bitsandbytes.optim.AdamW8bit(groups, lr=o.lr, betas=(o.beta1, o.beta2), eps=o.eps)
    return torch.optim.AdamW(groups, lr=o.lr, betas=(o.beta1, o.beta2), eps=o.eps)
