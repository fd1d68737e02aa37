"""What the per-rank numbers mean for the run (pure): does it fit, what dominates, what to
change when it does not, the table of all ZeRO stages, and the communication and throughput to
expect."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from launcher.plan.architecture import Architecture
from launcher.plan.memory import (
    GPU_FRAGMENTATION,
    GPU_RESERVE_BYTES,
    Layout,
    RankMemory,
    plan_rank,
    weight_bytes,
)
from launcher.plan.peft_params import trainable_params
from trainer.config import JobConfig

# Peak dense TFLOP/s assumed for the throughput estimate unless --peak-tflops says otherwise:
# an H100 SXM in bf16/fp16, the same GPU in fp32 (no tensor cores), one AVX2 core.
PEAK_TFLOPS = {("gpu", "mixed"): 989.0, ("gpu", "fp32"): 67.0, ("cpu", "any"): 0.05}


@dataclass(frozen=True)
class Target:
    """Memory each rank can use: the GPU's, or its share of the node's RAM on CPU workers."""

    bytes_per_rank: int | None  # None: unknown (the verdict says so)
    source: str  # where the number comes from, for the report


@dataclass(frozen=True)
class Verdict:
    fits: bool | None  # None: no target known
    usable_bytes: int | None
    dominant: str
    suggestion: str | None


def usable_bytes(target: Target, device: str) -> int | None:
    """What the plan's peak may reach: on a GPU, less the context and fragmentation reserve."""
    if target.bytes_per_rank is None:
        return None
    if device == "gpu":
        return int(target.bytes_per_rank * (1 - GPU_FRAGMENTATION)) - GPU_RESERVE_BYTES
    return target.bytes_per_rank


def verdict(
    job: JobConfig, arch: Architecture, layout: Layout, rank: RankMemory, target: Target
) -> Verdict:
    usable = usable_bytes(target, layout.device)
    dominant = next(iter(rank.components()))
    if usable is None:
        return Verdict(None, None, dominant, None)
    fits = rank.peak_bytes <= usable
    return Verdict(fits, usable, dominant, None if fits else suggest(job, arch, layout, usable))


def suggest(job: JobConfig, arch: Architecture, layout: Layout, usable: int) -> str:
    """The smallest change that fits, keeping the global batch: turn on gradient checkpointing,
    raise the ZeRO stage, offload the optimizer (GPU), trade micro-batch for accumulation."""
    for changes in _candidates(job):
        candidate = with_changes(job, changes)
        if plan_rank(candidate, arch, layout).peak_bytes <= usable:
            return (
                "set "
                + ", ".join(f"{k}: {_show(v)}" for k, v in changes.items())
                + (f" (global batch {job.global_batch_size()} kept)" if changes else "")
            )
    return (
        "no setting of zero_stage, offload, gradient checkpointing or micro-batch fits; use more "
        "workers (cluster.num_workers), PEFT (peft.method: lora), or larger devices"
    )


def _candidates(job: JobConfig) -> list[dict[str, Any]]:
    """Changes in order of cost: fewer and cheaper first."""
    t, e = job.training, job.engine
    stages = [s for s in range(e.zero_stage, 4)] if e.runs_deepspeed() else [e.zero_stage]
    offloads = ["none", "cpu"] if e.runs_deepspeed() and e.offload == "none" else [e.offload]
    micro = [m for m in range(t.micro_batch_size, 0, -1) if t.micro_batch_size % m == 0]
    found = []
    for m in micro:
        for offload in offloads:
            for stage in stages:
                for checkpointing in sorted({t.gradient_checkpointing, True}):
                    change: dict[str, Any] = {}
                    if checkpointing != t.gradient_checkpointing:
                        change["training.gradient_checkpointing"] = True
                    if stage != e.zero_stage:
                        change["engine.zero_stage"] = stage
                    if offload != e.offload and stage > 0:
                        change["engine.offload"] = offload
                    elif offload != e.offload:
                        continue
                    if m != t.micro_batch_size:
                        change["training.micro_batch_size"] = m
                        change["training.grad_accum"] = t.grad_accum * t.micro_batch_size // m
                    found.append(change)
    return sorted(found, key=len)


def with_changes(job: JobConfig, changes: dict[str, Any]) -> JobConfig:
    """`job` with dotted fields replaced (validated again)."""
    raw = job.model_dump(mode="json")
    for dotted, value in changes.items():
        section, key = dotted.split(".")
        raw[section][key] = value
    return JobConfig.model_validate(raw)


def stage_table(job: JobConfig, arch: Architecture, layout: Layout) -> list[dict[str, Any]]:
    """Peak per rank for ZeRO stages 0-3, without and with optimizer offload (DeepSpeed)."""
    rows = []
    for stage in range(4):
        for offload in ("none", "cpu"):
            if offload == "cpu" and stage == 0:
                continue
            changes = {
                "engine.backend": "deepspeed",
                "engine.strategy": "deepspeed",
                "engine.fsdp": None,
                "engine.zero_stage": stage,
                "engine.offload": offload,
            }
            rank = plan_rank(with_changes(job, changes), arch, layout)
            rows.append({"zero_stage": stage, "offload": offload, "peak_bytes": rank.peak_bytes})
    return rows


def communication_bytes(job: JobConfig, arch: Architecture, layout: Layout) -> int:
    """Bytes each rank sends per optimizer step: gradients all-reduced (ring: 2 (N-1)/N of them),
    or under ZeRO-3 / FSDP the weights gathered for forward and backward of every micro-batch
    (and once more for the recomputed forward with gradient checkpointing) and the gradients
    reduce-scattered."""
    n = layout.world
    if n == 1:
        return 0
    share = (n - 1) / n
    bw = weight_bytes(job)
    trainable = trainable_params(job.peft, arch, job.model.task)
    sharded = job.engine.zero_stage == 3 or job.engine.strategy == "fsdp"
    if sharded:
        per_micro = 3 if job.training.gradient_checkpointing else 2
        gathers = per_micro * job.training.grad_accum * arch.params * bw
        return int((gathers + trainable * bw) * share)
    return int(2 * trainable * bw * share)


def flops_per_token(job: JobConfig, arch: Architecture) -> int:
    """Training FLOPs per token: 2 per weight forward, 2 backward through activations, 2 for the
    weight gradients of trainable weights (6N for full fine-tuning), one more forward with
    gradient checkpointing, plus attention (12 x layers x hidden x length)."""
    trainable = trainable_params(job.peft, arch, job.model.task)
    forward = 2 * arch.params
    dense = forward + 2 * arch.params + 2 * trainable
    if job.training.gradient_checkpointing:
        dense += forward
    return dense + 12 * arch.layers * arch.hidden * job.data.max_length


def tokens_per_s(
    job: JobConfig, arch: Architecture, layout: Layout, mfu: float, peak_tflops: float | None
) -> tuple[float, float]:
    """(tokens/s of the whole job, peak TFLOP/s per worker assumed) at model FLOPs utilisation
    `mfu`."""
    kind = "any" if layout.device == "cpu" else ("fp32" if weight_bytes(job) == 4 else "mixed")
    peak = peak_tflops or PEAK_TFLOPS[(layout.device, kind)] * (
        job.cluster.cpus_per_worker if layout.device == "cpu" else 1
    )
    return mfu * peak * 1e12 * layout.world / flops_per_token(job, arch), peak


def _show(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)
