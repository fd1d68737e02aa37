"""One plan, as a value: computed from the job, the architecture and the target (pure), shown
as a text table or one JSON object."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from launcher.plan.advice import (
    Target,
    Verdict,
    communication_bytes,
    flops_per_token,
    stage_table,
    tokens_per_s,
    verdict,
)
from launcher.plan.architecture import Architecture
from launcher.plan.memory import Layout, RankMemory, plan_rank
from launcher.plan.peft_params import trainable_params
from trainer.config import JobConfig

DEFAULT_MFU = 0.4


@dataclass(frozen=True)
class Plan:
    job: JobConfig
    arch: Architecture
    layout: Layout
    rank: RankMemory
    target: Target
    verdict: Verdict
    stages: list[dict[str, Any]]
    communication_bytes: int
    tokens_per_s: float
    mfu: float
    peak_tflops: float

    def as_json(self) -> dict[str, Any]:
        v = self.verdict
        return {
            "model": {"model_type": self.arch.model_type, "counted_from": self.arch.counted_from},
            "params": self.arch.params,
            "trainable_params": self.trainable,
            "per_rank": self.rank.as_json(),
            "layout": vars(self.layout),
            "target": {
                "bytes_per_rank": self.target.bytes_per_rank,
                "source": self.target.source,
                "usable_bytes": v.usable_bytes,
            },
            "fits": v.fits,
            "dominant": v.dominant,
            "suggestion": v.suggestion,
            "stages": self.stages,
            "communication_bytes_per_step": self.communication_bytes,
            "flops_per_token": flops_per_token(self.job, self.arch),
            "tokens_per_s": self.tokens_per_s,
            "mfu": self.mfu,
            "peak_tflops_per_worker": self.peak_tflops,
        }

    @property
    def trainable(self) -> int:
        """Parameters that train: all of them, or the PEFT method's (adapter and task head)."""
        return trainable_params(self.job.peft, self.arch, self.job.model.task)


def make_plan(
    job: JobConfig,
    arch: Architecture,
    layout: Layout,
    target: Target,
    mfu: float = DEFAULT_MFU,
    peak_tflops: float | None = None,
) -> Plan:
    rank = plan_rank(job, arch, layout)
    speed, peak = tokens_per_s(job, arch, layout, mfu, peak_tflops)
    return Plan(
        job=job,
        arch=arch,
        layout=layout,
        rank=rank,
        target=target,
        verdict=verdict(job, arch, layout, rank, target),
        stages=stage_table(job, arch, layout),
        communication_bytes=communication_bytes(job, arch, layout),
        tokens_per_s=speed,
        mfu=mfu,
        peak_tflops=peak,
    )


def render(plan: Plan) -> list[str]:
    """The text report, line by line."""
    job, rank = plan.job, plan.rank
    e = job.engine
    engine = f"ZeRO-{e.zero_stage}" if e.runs_deepspeed() else e.strategy.upper()
    offload = ", optimizer offloaded to CPU" if e.offload == "cpu" else ""
    lines = [
        f"model: {plan.arch.model_type}, {plan.arch.params:,} parameters, {plan.trainable:,} "
        f"trainable (counted from {plan.arch.counted_from})",
        f"run: {plan.layout.world} rank(s), {plan.layout.workers_per_node} per node, "
        f"{plan.layout.device.upper()}, {engine}{offload}, {job.training.precision}, "
        f"micro-batch {job.training.micro_batch_size} x {job.data.max_length} tokens, "
        f"gradient checkpointing {'on' if job.training.gradient_checkpointing else 'off'}",
        "per rank:",
    ]
    for name, size in rank.components().items():
        lines.append(f"  {name:<34}{format_size(size):>12}")
    lines.append(
        f"  {'model states (weights+grads+optim)':<34}{format_size(rank.model_states_bytes):>12}"
    )
    lines.append(f"  {'peak':<34}{format_size(rank.peak_bytes):>12}")
    if rank.offloaded_bytes:
        lines.append(
            f"  host memory for offloaded state: {format_size(rank.offloaded_bytes)} per rank"
        )
    if rank.device == "gpu":
        lines.append(f"  host memory of rank 0 while loading: {format_size(rank.load_bytes)}")
        if rank.snapshot_bytes:
            lines.append(
                f"  host memory for the checkpoint snapshot: {format_size(rank.snapshot_bytes)} per rank"
            )
    lines.append("all stages, peak per rank: " + stages_line(plan.stages))
    comm = format_size(plan.communication_bytes)
    lines.append(
        f"communication: {comm} sent per rank per optimizer step; about "
        f"{plan.tokens_per_s:,.0f} tokens/s at {plan.mfu:.0%} MFU of {plan.peak_tflops:g} TFLOP/s per worker"
    )
    lines.append(verdict_line(plan))
    return lines


def stages_line(stages: list[dict[str, Any]]) -> str:
    cells = []
    for row in stages:
        label = f"ZeRO-{row['zero_stage']}" + ("+offload" if row["offload"] == "cpu" else "")
        cells.append(f"{label} {format_size(row['peak_bytes'])}")
    return " | ".join(cells)


def verdict_line(plan: Plan) -> str:
    v, target = plan.verdict, plan.target
    if v.fits is None:
        return f"verdict: unknown, {target.source}"
    usable = format_size(v.usable_bytes or 0)
    if v.fits:
        return f"verdict: fits ({format_size(plan.rank.peak_bytes)} of {usable} usable per rank; {target.source})"
    return (
        f"verdict: does not fit ({format_size(plan.rank.peak_bytes)} per rank, {usable} usable; "
        f"{target.source}); dominant: {v.dominant}; suggestion: {v.suggestion}"
    )


def format_size(size: float) -> str:
    """Memory in binary units with three digits: `11.7 GiB`, `640 MiB`."""
    for unit, factor in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(size) >= factor:
            return f"{size / factor:.3g} {unit}"
    return f"{size:g} B"
