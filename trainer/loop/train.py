"""The training cadence, once for every recipe: resume position, micro-steps, when to log,
evaluate, checkpoint, stop early and answer a preemption.

`train_epochs` is the only place that decides these; a recipe (trainer/recipes/) supplies how a
batch becomes a loss and how a split is evaluated. All ranks run the same steps in the same
order: every decision below is either a pure function of the shared progress or agreed by a
collective (`all_agree`), so no rank waits at a collective the others have left.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
import torch.distributed as dist

from trainer.data.split import Batch, ShardedSplit, TimedIterator
from trainer.engines.base import Engine
from trainer.engines.snapshot import Snapshot, capture_weights
from trainer.loop.checkpoints import checkpoint_now, load_checkpoint
from trainer.loop.context import Run
from trainer.loop.progress import Evaluation, StepPlan, TrainProgress
from trainer.loop.window import RankWindow


class Task(Protocol):
    """What differs between recipes inside the training loop."""

    def loss(self, engine: Engine, batch: Any) -> torch.Tensor:
        """The mean loss of one micro-batch (what backward runs on)."""
        ...

    def evaluate(self, engine: Engine, split: Any) -> Evaluation:
        """Collective: score every row of `split` once across ranks."""
        ...

    def after_evaluation(self, engine: Engine, step: int, run: Run, validation: Any) -> None:
        """Collective: anything a recipe does after each validation (generation samples)."""
        ...


@dataclass
class TrainOutcome:
    progress: TrainProgress
    best_weights: Snapshot  # of the best validation (the last step always validates)
    preempted: bool = False
    preempted_tag: str | None = None
    # (real tokens, computed token positions) of every rank's training micro-batches
    token_slots: list[float] = field(default_factory=lambda: [0.0, 0.0])


def train_epochs(
    run: Run, task: Task, train: ShardedSplit, validation: Any, plan: StepPlan
) -> TrainOutcome:
    """Train from the newest checkpoint (if any) until the plan, early stopping or a
    preemption ends it. Collective: every rank calls it."""
    t = run.spec.job.training
    progress, best = resume(run)
    window = RankWindow(t.log_every)
    slots = torch.zeros(2, dtype=torch.float64)
    while progress.epoch < t.epochs and not plan.is_finished(progress.step):
        run.enter("data", progress.step + 1)
        stream = _epoch_stream(run, train, progress, plan)
        for batch in stream:
            _micro_step(run, task, batch, stream, window, progress.step + 1)
            slots += torch.tensor([batch.num_tokens(), batch.num_slots()], dtype=torch.float64)
            progress.advance_micro(run.world * t.micro_batch_size)
            if progress.micro_steps_in_epoch % t.grad_accum:
                continue
            progress.step += 1
            window.end_step()
            paused_at = time.perf_counter()
            best, saved = _between_steps(run, task, validation, plan, progress, window, best)
            run.enter("collective", progress.step)
            if run.io.stop is not None and all_agree(run.io.stop.requested()):
                run.enter("save", progress.step)
                # A checkpoint of this very step may be in flight: wait for it, never save
                # into its staging again (its commit would move the files being written).
                tag = checkpoint_now(run, progress, best, "preempted", already_saved=saved)
                return TrainOutcome(progress, best or [], preempted=True, preempted_tag=tag)
            if progress.stopped_early or plan.is_finished(progress.step):
                break
            window.exclude_pause(paused_at)
            run.enter("data", progress.step + 1)
        if progress.stopped_early:
            break
        progress.next_epoch()
    if best is None or progress.best_val_metrics is None:  # the last step always evaluates
        raise RuntimeError("training ended without a validation pass")
    dist.all_reduce(slots)
    return TrainOutcome(progress, best, token_slots=slots.tolist())


def resume(run: Run) -> tuple[TrainProgress, Snapshot | None]:
    """The progress and best weights of the newest checkpoint (after a restart, or --resume);
    a fresh start without one. A checkpoint of another world size continues at the same stream
    position and global step (the global batch is kept), and the change is reported."""
    checkpoints = run.io.checkpoints
    tag = checkpoints.latest() if checkpoints is not None else None
    if checkpoints is None or tag is None:
        return TrainProgress(), None
    progress, best, saved_world = load_checkpoint(run.engine, tag, checkpoints)
    t = run.spec.job.training
    # Micro-steps are per rank: recount them for this world size from the global position.
    progress.micro_steps_in_epoch = progress.samples_seen_in_epoch // (
        run.world * t.micro_batch_size
    )
    run.report({"event": "resumed", "tag": tag, "step": progress.step})
    if saved_world != run.world:
        change = {"step": progress.step, "from": saved_world, "to": run.world}
        progress.world_size_changes.append(change | {"grad_accum": t.grad_accum})
        run.report({"event": "world_size", **progress.world_size_changes[-1]})
    return progress, best


def _epoch_stream(
    run: Run, train: ShardedSplit, progress: TrainProgress, plan: StepPlan
) -> TimedIterator:
    """This rank's remaining micro-batches of the current epoch, from the stream position."""
    t = run.spec.job.training
    batches = train.epoch_batches(
        progress.epoch,
        t.seed,
        run.world,
        run.rank,
        t.micro_batch_size,
        train=True,
        start=progress.samples_seen_in_epoch,
    )
    remaining = batches[: plan.micro_to_train() - progress.micro_steps_in_epoch]
    return TimedIterator(train.iter_batches(remaining))


def _micro_step(
    run: Run, task: Task, batch: Batch, stream: TimedIterator, window: RankWindow, step: int
) -> None:
    """Forward, backward and (on the last micro-batch of `step`) the optimizer step. Each phase
    is published as it begins (Run.enter), so a stalled rank's heartbeat says where it stopped."""
    engine = run.engine
    with engine.accumulate():
        run.enter("forward", step)
        forward_started = time.perf_counter()
        loss = task.loss(engine, batch)
        forward_s = time.perf_counter() - forward_started
        run.enter("backward", step)
        backward_started = time.perf_counter()
        engine.backward(loss)
        run.enter("optimizer", step)
        engine.step()
        backward_s = time.perf_counter() - backward_started
    window.add_micro(loss.item(), batch, stream.wait_s, forward_s, backward_s)
    stream.wait_s = 0.0
    if run.spec.job.training.record_sample_ids:
        run.enter("collective", step)
        report_sample_ids(run, batch, step)
    run.enter("data", step)  # the next micro-batch (or, after the last one, the next step's)


def _between_steps(
    run: Run,
    task: Task,
    validation: Any,
    plan: StepPlan,
    progress: TrainProgress,
    window: RankWindow,
    best: Snapshot | None,
) -> tuple[Snapshot | None, bool]:
    """After optimizer step `progress.step`: log, validate, checkpoint as the config says.
    Returns the best weights so far and whether a checkpoint of this step was saved."""
    t = run.spec.job.training
    step, epoch = progress.step, plan.epoch_float(progress)
    end_of_epoch = plan.is_end_of_epoch(progress.micro_steps_in_epoch)
    if t.log_due(step, plan.total_steps):
        run.enter("collective", step)
        record = {"event": "train", "step": step, "epoch": epoch} | window.flush()
        run.report(record | {"lr": run.engine.get_lr()[0]})
    if t.eval_due(step, end_of_epoch, plan.total_steps):
        run.enter("eval", step)
        result = task.evaluate(run.engine, validation)
        if progress.record_evaluation(result, t):
            best = capture_weights(run.engine.module)
        run.report(
            {"event": "eval", "step": step, "epoch": epoch}
            | result.metrics("val")
            | {"best_step": progress.best_step}
        )
        task.after_evaluation(run.engine, step, run, validation)
    if run.io.checkpoints is not None and t.checkpoint_due(step, end_of_epoch):
        run.enter("save", step)
        checkpoint_now(run, progress, best, "checkpoint")
        return best, True
    return best, False


def all_agree(flag: bool) -> bool:
    """True on every rank as soon as one rank saw `flag` (ranks must stop at the same step)."""
    value = torch.tensor([1.0 if flag else 0.0])
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def report_sample_ids(run: Run, batch: Batch, step: int) -> None:
    """Audit trail of which samples each step consumed, all ranks gathered (collective)."""
    gathered: list[list[int]] = [[] for _ in range(run.world)]
    dist.all_gather_object(gathered, batch.sample_ids.tolist())
    run.report({"event": "samples", "step": step, "sample_ids": gathered})
