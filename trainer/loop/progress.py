"""Where training stands and how long it runs: the resumable progress, the step plan, and the
best-so-far bookkeeping of validation. Pure apart from seeding."""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import numpy as np
import torch

from trainer.config.schema import JobConfig, TrainingConfig


class Evaluation(Protocol):
    """One validation (or test) pass: what early stopping and the reports read."""

    def metric(self, name: str) -> float: ...

    def metrics(self, prefix: str) -> dict[str, float]: ...

    def summary(self) -> dict[str, float]: ...


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
    # each resume on another number of workers: {step, from, to, grad_accum}, for summary.json
    world_size_changes: list[dict[str, int]] = field(default_factory=list)

    def state_dict(self) -> dict[str, Any]:
        """Plain JSON; checkpointing adds the RNG states next to it."""
        return asdict(self)

    def advance_micro(self, global_micro_batch: int) -> None:
        """One micro-batch of `global_micro_batch` samples (all ranks together) consumed."""
        self.micro_steps_in_epoch += 1
        self.samples_seen_in_epoch += global_micro_batch

    def next_epoch(self) -> None:
        self.epoch += 1
        self.micro_steps_in_epoch = self.samples_seen_in_epoch = 0

    def record_evaluation(self, result: Evaluation, t: TrainingConfig) -> bool:
        """Update best-so-far and patience from one validation pass; True if it is the new best.

        Identical on every rank (metrics come from all-gathered predictions), so all ranks stop
        together.
        """
        value = result.metric(t.early_stopping_metric)
        if t.metric_is_better(value, self.best_metric):
            self.best_metric, self.best_step = value, self.step
            self.best_val_metrics = result.metrics("val")
            self.evals_without_improvement = 0
            return True
        self.evals_without_improvement += 1
        patience = t.early_stopping_patience
        self.stopped_early = patience is not None and self.evals_without_improvement > patience
        return False


@dataclass(frozen=True)
class StepPlan:
    """How many micro-batches and optimizer steps an epoch and the whole run have (per rank)."""

    micro_per_epoch: int  # micro-batches this rank's share of an epoch holds
    steps_per_epoch: int  # optimizer steps per epoch (whole grad_accum groups only)
    total_steps: int
    grad_accum: int

    def micro_to_train(self) -> int:
        """Micro-batches per epoch that end in an optimizer step (a partial group is skipped)."""
        return self.steps_per_epoch * self.grad_accum

    def is_end_of_epoch(self, micro_steps_in_epoch: int) -> bool:
        return micro_steps_in_epoch == self.micro_to_train()

    def is_finished(self, step: int) -> bool:
        return step >= self.total_steps

    def epoch_float(self, progress: TrainProgress) -> float:
        """Epochs done as a fraction, for the reports."""
        return round(progress.epoch + progress.micro_steps_in_epoch / self.micro_per_epoch, 4)


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
    return StepPlan(micro_per_epoch, steps_per_epoch, total_steps, t.grad_accum)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
