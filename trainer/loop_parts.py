"""Pieces both training loops (classification and causal LM) share: progress and its resume
state, the step plan, evaluation bookkeeping, checkpoints and the collectives that keep ranks in
step. Each loop stays readable top to bottom and calls these by name."""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.distributed as dist

from trainer.checkpointing import save_checkpoint
from trainer.config.checkpoints import step_tag
from trainer.config.schema import JobConfig, TrainingConfig
from trainer.config.spec import RunSpec
from trainer.data import Batch
from trainer.evaluation import EvalResult
from trainer.protocols import CheckpointSink, Reporter
from trainer.snapshot import Snapshot


@dataclass
class TrainProgress:
    """Where training stands; `state_dict()` is what a checkpoint needs to resume exactly."""

    epoch: int = 0
    step: int = 0
    micro_steps_in_epoch: int = 0
    samples_seen_in_epoch: int = 0  # global position in this epoch's sample order
    best_metric: float | None = None
    best_step: int = 0
    best_val_metrics: dict[str, float] | None = None
    evals_without_improvement: int = 0
    stopped_early: bool = False

    def state_dict(self) -> dict[str, Any]:
        """Plain JSON; checkpointing adds the RNG states next to it."""
        return asdict(self)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class StepPlan(NamedTuple):
    """How many micro-batches and optimizer steps an epoch and the whole run have."""

    micro_per_epoch: int
    steps_per_epoch: int
    total_steps: int


def plan_steps(job: JobConfig, micro_per_epoch: int, train_rows: int) -> StepPlan:
    """The step plan for `micro_per_epoch` micro-batches per rank (pure).

    Raises:
        ValueError: the train split cannot fill a single optimizer step.
    """
    t = job.training
    steps_per_epoch = micro_per_epoch // t.grad_accum
    if steps_per_epoch == 0:
        raise ValueError(
            f"data.train: {train_rows} rows cannot fill one optimizer step of "
            f"{job.global_batch_size()} samples (micro_batch_size x grad_accum x num_workers)"
        )
    total_steps = min(t.max_steps or 10**12, steps_per_epoch * t.epochs)
    return StepPlan(micro_per_epoch, steps_per_epoch, total_steps)


def common_run_facts(job: JobConfig, world: int, engine, trainable: int, total: int) -> dict:
    """What summary.json says about every run, whatever the task."""
    t = job.training
    return {
        "world_size": world,
        "zero_stage": job.engine.zero_stage,
        "engine": engine.describe(),
        "peft_method": job.peft.method,
        "trainable_params": trainable,
        "total_params": total,
        "trainable_fraction": trainable / total,
        "precision": t.precision,
        "gradient_checkpointing": t.gradient_checkpointing,
    }


def record_evaluation(progress: TrainProgress, result: EvalResult, t: TrainingConfig) -> bool:
    """Update best-so-far and patience from one validation pass; True if it is the new best.

    Identical on every rank (metrics come from all-gathered predictions), so all ranks stop together.
    """
    value = result.metric(t.early_stopping_metric)
    if t.metric_is_better(value, progress.best_metric):
        progress.best_metric, progress.best_step = value, progress.step
        progress.best_val_metrics = result.metrics("val")
        progress.evals_without_improvement = 0
        return True
    progress.evals_without_improvement += 1
    patience = t.early_stopping_patience
    progress.stopped_early = patience is not None and progress.evals_without_improvement > patience
    return False


def checkpoint_now(
    engine,
    progress: TrainProgress,
    best: Snapshot | None,
    checkpoints: CheckpointSink | None,
    spec: RunSpec,
    reporter: Reporter,
    event: str,
) -> str | None:
    """Save and commit a checkpoint of the current step (all ranks); rank 0 reports `event`."""
    tag, blocked = None, 0.0
    if checkpoints is not None:
        tag = step_tag(progress.step)
        state = {
            "step": progress.step,
            "epoch": progress.epoch,
            "world_size": dist.get_world_size(),
            "samples_seen_in_epoch": progress.samples_seen_in_epoch,
            "config_fingerprint": spec.config_fingerprint,
            "spec": spec.model_dump(mode="json"),  # what export needs to rebuild the model
        }
        blocked = save_checkpoint(engine, tag, progress.state_dict(), best, checkpoints, state)
        if event == "preempted":  # the launcher exits next: the checkpoint must be on the head
            checkpoints.wait_committed(tag, spec.job.training.preemption_grace_s)
    if dist.get_rank() == 0:
        reporter.report({"event": event, "step": progress.step, "tag": tag, "blocked_s": blocked})
    return tag


def all_agree(flag: bool) -> bool:
    """True on every rank as soon as one rank saw `flag` (ranks must stop at the same step)."""
    value = torch.tensor([1.0 if flag else 0.0])
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def report_sample_ids(reporter: Reporter, batch: Batch, step: int, is_rank_zero: bool) -> None:
    """Audit trail of which samples each step consumed, all ranks gathered (collective)."""
    gathered: list[list[int]] = [[] for _ in range(dist.get_world_size())]
    dist.all_gather_object(gathered, batch.sample_ids.tolist())
    if is_rank_zero:
        reporter.report({"event": "samples", "step": step, "sample_ids": gathered})


def eval_due(eval_every: int | str, step: int, end_of_epoch: bool) -> bool:
    return end_of_epoch if eval_every == "epoch" else step % eval_every == 0


def is_finished(progress: TrainProgress, total_steps: int) -> bool:
    return progress.step >= total_steps
