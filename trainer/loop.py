"""The sequence-classification fine-tuning recipe, top to bottom.

setup -> train (periodic validation, early stopping) -> test the best weights -> save -> report.
Runs in every worker; the process group (RANK/WORLD_SIZE/MASTER_ADDR) is already set up by
whoever started the workers (Ray Train here, torchrun in the overhead benchmark).
"""

from __future__ import annotations

import json
import random
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from trainer.checkpointing import checkpoint_due, load_checkpoint, save_checkpoint
from trainer.config.checkpoints import step_tag
from trainer.config.schema import TrainingConfig
from trainer.config.spec import RunSpec
from trainer.data import Batch, ShardedSplit, TimedIterator
from trainer.engine import build_engine, check_precision
from trainer.evaluation import EvalResult, evaluate, majority_baseline_accuracy
from trainer.export import save_classifier
from trainer.model import build_classifier, count_parameters
from trainer.protocols import ArtifactSink, CheckpointSink, Reporter, StopSignal
from trainer.rank_window import RankWindow
from trainer.shards import ShardStore, open_store
from trainer.snapshot import Snapshot, capture_weights, restore_weights


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


def run_classification(
    spec: RunSpec,
    reporter: Reporter,
    sink: ArtifactSink,
    open_split_store: Callable[[str], ShardStore] = open_store,
    checkpoints: CheckpointSink | None = None,
    stop: StopSignal | None = None,
) -> dict[str, Any]:
    """Fine-tune, evaluate and save; returns the summary (also reported to the head by rank 0)."""
    job, t = spec.job, spec.job.training
    world, rank = dist.get_world_size(), dist.get_rank()
    is_rank_zero = rank == 0
    torch.set_num_threads(max(1, int(job.cluster.cpus_per_worker)))
    seed_everything(t.seed)
    wall_start = time.perf_counter()

    # --- setup: data, model, engine
    train_split, val_split, test_split = (
        ShardedSplit(open_split_store(spec.split_dirs[name]))
        for name in ("train", "validation", "test")
    )
    micro_per_epoch = len(
        train_split.epoch_batches(0, t.seed, world, rank, t.micro_batch_size, train=True)
    )
    steps_per_epoch = micro_per_epoch // t.grad_accum
    if steps_per_epoch == 0:
        raise ValueError(
            f"data.train: {train_split.num_rows} rows cannot fill one optimizer step of "
            f"{job.global_batch_size()} samples (micro_batch_size x grad_accum x num_workers)"
        )
    total_steps = min(t.max_steps or 10**12, steps_per_epoch * t.epochs)
    check_precision(t.precision)
    model = build_classifier(spec.model_dir, spec.label_names, job.peft, t.gradient_checkpointing)
    trainable, total = count_parameters(model)
    engine = build_engine(model, job, world, total_steps)
    num_classes = len(spec.label_names)
    eval_batch = t.effective_eval_batch_size()
    dropped = train_split.num_rows - steps_per_epoch * t.grad_accum * t.micro_batch_size * world
    run_facts = {
        "world_size": world,
        "zero_stage": job.engine.zero_stage,
        "engine": engine.describe(),
        "peft_method": job.peft.method,
        "trainable_params": trainable,
        "total_params": total,
        "trainable_fraction": trainable / total,
        "precision": t.precision,
        "gradient_checkpointing": t.gradient_checkpointing,
        "train_samples_dropped_per_epoch": dropped,
    }
    if is_rank_zero:
        start = {"event": "start", "total_steps": total_steps, "steps_per_epoch": steps_per_epoch}
        reporter.report(start | run_facts)

    # --- resume from the newest checkpoint (after a restart, or --resume)
    progress, best_weights = TrainProgress(), None
    resume_tag = checkpoints.latest() if checkpoints else None
    if resume_tag:
        fields, best_weights = load_checkpoint(engine, resume_tag, checkpoints)
        progress = TrainProgress(**fields)
        if is_rank_zero:
            reporter.report({"event": "resumed", "tag": resume_tag, "step": progress.step})

    # --- train with periodic validation, early stopping and checkpoints
    window = RankWindow(t.log_every)
    micro_in_epoch = steps_per_epoch * t.grad_accum
    while progress.epoch < t.epochs and not _is_finished(progress, total_steps):
        batches = train_split.epoch_batches(
            progress.epoch,
            t.seed,
            world,
            rank,
            t.micro_batch_size,
            train=True,
            start=progress.samples_seen_in_epoch,
        )
        remaining = batches[: micro_in_epoch - progress.micro_steps_in_epoch]
        stream = TimedIterator(train_split.iter_batches(remaining))
        for batch in stream:
            with engine.accumulate():
                forward_started = time.perf_counter()
                outputs = engine(
                    **batch.model_inputs(engine.device), labels=batch.labels.to(engine.device)
                )
                forward_s = time.perf_counter() - forward_started
                engine.backward(outputs.loss)
                engine.step()
            window.add_micro(outputs.loss.item(), batch, stream.wait_s, forward_s)
            stream.wait_s = 0.0
            if t.record_sample_ids:
                _report_sample_ids(reporter, batch, progress.step + 1, is_rank_zero)
            progress.micro_steps_in_epoch += 1
            progress.samples_seen_in_epoch += world * t.micro_batch_size
            if progress.micro_steps_in_epoch % t.grad_accum:
                continue
            progress.step += 1
            window.end_step()
            paused_at = time.perf_counter()
            epoch_float = progress.epoch + progress.micro_steps_in_epoch / micro_per_epoch
            if progress.step % t.log_every == 0 or progress.step == total_steps:
                record = {"event": "train", "step": progress.step, "epoch": round(epoch_float, 4)}
                record |= window.flush() | {"lr": engine.get_lr()[0]}
                if is_rank_zero:
                    reporter.report(record)
            end_of_epoch = progress.micro_steps_in_epoch == steps_per_epoch * t.grad_accum
            if _eval_due(t.eval_every, progress.step, end_of_epoch) or progress.step == total_steps:
                result = evaluate(engine, val_split, eval_batch, num_classes)
                if record_evaluation(progress, result, t):
                    best_weights = capture_weights(engine.module)
                if is_rank_zero:
                    reporter.report(
                        {"event": "eval", "step": progress.step, "epoch": round(epoch_float, 4)}
                        | result.metrics("val")
                        | {"best_step": progress.best_step}
                    )
            if checkpoints and checkpoint_due(t.checkpoint_every, progress.step, end_of_epoch):
                _checkpoint(
                    engine, progress, best_weights, checkpoints, spec, reporter, "checkpoint"
                )
            if stop is not None and _all_agree(stop.requested()):
                tag = _checkpoint(
                    engine, progress, best_weights, checkpoints, spec, reporter, "preempted"
                )
                if checkpoints is not None:
                    checkpoints.cleanup()
                return {"preempted": True, "step": progress.step, "tag": tag}
            if progress.stopped_early or _is_finished(progress, total_steps):
                break
            window.exclude_pause(paused_at)
        if progress.stopped_early:
            break
        progress.epoch += 1
        progress.micro_steps_in_epoch = progress.samples_seen_in_epoch = 0
    if best_weights is None or progress.best_val_metrics is None:  # the last step always evaluates
        raise RuntimeError("training ended without a validation pass")

    # --- test the best weights, then save them
    restore_weights(engine.module, best_weights)
    test_result = evaluate(engine, test_split, eval_batch, num_classes)
    state = engine.consolidated_state_dict()
    summary = run_facts | {
        "best_validation": progress.best_val_metrics | {"step": progress.best_step},
        "test": test_result.summary(),
        "majority_baseline_accuracy": majority_baseline_accuracy(
            train_split.majority_label(), test_result.labels
        ),
        "steps": progress.step,
        "epochs_completed": progress.epoch,
        "stopped_early": progress.stopped_early,
        "worker_wall_s": time.perf_counter() - wall_start,
    }
    if is_rank_zero:
        _save_and_send(state, spec, test_result, sink)
        reporter.report({"event": "summary", **summary})
    dist.barrier()  # nobody leaves before rank 0 has delivered the model
    if checkpoints:
        checkpoints.cleanup()
    engine.destroy()
    return summary


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


def _checkpoint(
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


def _all_agree(flag: bool) -> bool:
    """True on every rank as soon as one rank saw `flag` (ranks must stop at the same step)."""
    value = torch.tensor([1.0 if flag else 0.0])
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def _report_sample_ids(reporter: Reporter, batch: Batch, step: int, is_rank_zero: bool) -> None:
    """Audit trail of which samples each step consumed, all ranks gathered (collective)."""
    gathered: list[list[int]] = [[] for _ in range(dist.get_world_size())]
    dist.all_gather_object(gathered, batch.sample_ids.tolist())
    if is_rank_zero:
        reporter.report({"event": "samples", "step": step, "sample_ids": gathered})


def _eval_due(eval_every: int | str, step: int, end_of_epoch: bool) -> bool:
    return end_of_epoch if eval_every == "epoch" else step % eval_every == 0


def _is_finished(progress: TrainProgress, total_steps: int) -> bool:
    return progress.step >= total_steps


def _save_and_send(
    state: dict[str, torch.Tensor], spec: RunSpec, test: EvalResult, sink: ArtifactSink
) -> None:
    with tempfile.TemporaryDirectory(prefix="ftlaunch-export-") as tmp:
        model_dir = save_classifier(state, spec, Path(tmp) / "model")
        sink.put_dir(model_dir, "model")
        predictions = Path(tmp) / "predictions_test.jsonl"
        with predictions.open("w") as fh:
            for sample_id, pred, label in zip(
                test.sample_ids, test.predictions, test.labels, strict=True
            ):
                row = {
                    "sample_id": int(sample_id),
                    "prediction": spec.label_names[pred],
                    "label": spec.label_names[label],
                }
                fh.write(json.dumps(row) + "\n")
        sink.put_file(predictions, "predictions_test.jsonl")
