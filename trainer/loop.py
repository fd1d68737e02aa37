"""The sequence-classification fine-tuning recipe, top to bottom.

setup -> train (periodic validation, early stopping) -> test the best weights -> save -> report.
Runs in every worker; the process group (RANK/WORLD_SIZE/MASTER_ADDR) is already set up by
whoever started the workers (Ray Train here, torchrun in the overhead benchmark).
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from trainer.checkpointing import checkpoint_due, load_checkpoint
from trainer.config.spec import RunSpec
from trainer.data import ShardedSplit, TimedIterator
from trainer.engine import build_engine, check_precision
from trainer.evaluation import EvalResult, evaluate, majority_baseline_accuracy
from trainer.export import save_classifier
from trainer.loop_parts import (
    TrainProgress,
    all_agree,
    checkpoint_now,
    common_run_facts,
    eval_due,
    is_finished,
    plan_steps,
    record_evaluation,
    report_sample_ids,
    seed_everything,
)
from trainer.model import build_classifier, count_parameters
from trainer.protocols import ArtifactSink, CheckpointSink, Reporter, StopSignal
from trainer.rank_window import RankWindow
from trainer.shards import ShardStore, open_store
from trainer.snapshot import capture_weights, restore_weights


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
    micro_per_epoch, steps_per_epoch, total_steps = plan_steps(
        job,
        len(train_split.epoch_batches(0, t.seed, world, rank, t.micro_batch_size, train=True)),
        train_split.num_rows,
    )
    check_precision(t.precision)
    model = build_classifier(spec.model_dir, spec.label_names, job.peft, t.gradient_checkpointing)
    trainable, total = count_parameters(model)
    engine = build_engine(model, job, world, total_steps)
    num_classes = len(spec.label_names)
    eval_batch = t.effective_eval_batch_size()
    dropped = train_split.num_rows - steps_per_epoch * t.grad_accum * t.micro_batch_size * world
    run_facts = common_run_facts(job, world, engine, trainable, total) | {
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
    while progress.epoch < t.epochs and not is_finished(progress, total_steps):
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
                report_sample_ids(reporter, batch, progress.step + 1, is_rank_zero)
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
            if eval_due(t.eval_every, progress.step, end_of_epoch) or progress.step == total_steps:
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
                checkpoint_now(
                    engine, progress, best_weights, checkpoints, spec, reporter, "checkpoint"
                )
            if stop is not None and all_agree(stop.requested()):
                tag = checkpoint_now(
                    engine, progress, best_weights, checkpoints, spec, reporter, "preempted"
                )
                if checkpoints is not None:
                    checkpoints.cleanup()
                return {"preempted": True, "step": progress.step, "tag": tag}
            if progress.stopped_early or is_finished(progress, total_steps):
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
