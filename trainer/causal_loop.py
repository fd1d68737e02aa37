"""The causal-LM fine-tuning recipe, top to bottom (the sibling of loop.run_classification).

setup -> train (periodic validation loss/perplexity, generation samples, early stopping on
validation loss) -> test the best weights -> save -> report. Checkpoints, resume, preemption and
reporting are the classification loop's own helpers, so both tasks checkpoint and resume alike.
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

from trainer.causal_data import CausalSplit
from trainer.causal_eval import batch_loss, evaluate_causal, generate_samples
from trainer.checkpointing import checkpoint_due, load_checkpoint
from trainer.config.spec import RunSpec
from trainer.data import TimedIterator
from trainer.engine import build_engine, check_precision
from trainer.export import save_causal_lm
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
from trainer.model import build_causal_lm, count_parameters
from trainer.protocols import ArtifactSink, CheckpointSink, Reporter, StopSignal
from trainer.rank_window import RankWindow
from trainer.shards import ShardStore, open_store
from trainer.snapshot import capture_weights, restore_weights


def run_causal_lm(
    spec: RunSpec,
    reporter: Reporter,
    sink: ArtifactSink,
    open_split_store: Callable[[str], ShardStore] = open_store,
    checkpoints: CheckpointSink | None = None,
    stop: StopSignal | None = None,
) -> dict[str, Any]:
    """Fine-tune a decoder on next-token loss; returns the summary (rank 0 reports it too)."""
    job, t = spec.job, spec.job.training
    world, rank = dist.get_world_size(), dist.get_rank()
    is_rank_zero = rank == 0
    torch.set_num_threads(max(1, int(job.cluster.cpus_per_worker)))
    seed_everything(t.seed)
    wall_start = time.perf_counter()

    # --- setup: data, model, engine
    train_split, val_split, test_split = (
        CausalSplit(open_split_store(spec.split_dirs[name]))
        for name in ("train", "validation", "test")
    )
    micro_per_epoch, steps_per_epoch, total_steps = plan_steps(
        job,
        len(train_split.epoch_batches(0, t.seed, world, rank, t.micro_batch_size, train=True)),
        train_split.num_rows,
    )
    check_precision(t.precision)
    model = build_causal_lm(spec.model_dir, job.peft, t.gradient_checkpointing)
    trainable, total = count_parameters(model)
    engine = build_engine(model, job, world, total_steps)
    eval_batch = t.effective_eval_batch_size()
    prompts = val_split.prompts(t.generate_samples) if t.generate_samples else []
    eos_id = getattr(model.config, "eos_token_id", None)
    manifest = train_split.manifest
    run_facts = common_run_facts(job, world, engine, trainable, total) | {
        "task": "causal-lm",
        "data_format": manifest.data_format,
        "packing": manifest.packing,
        "train_examples": manifest.examples,
        "train_rows": manifest.total_rows,
        "packing_efficiency": manifest.packing_efficiency(),
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
    slots = torch.zeros(2, dtype=torch.float64)  # real tokens, computed positions (this process)
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
        stream = TimedIterator(
            train_split.iter_batches(batches[: micro_in_epoch - progress.micro_steps_in_epoch])
        )
        for batch in stream:
            with engine.accumulate():
                forward_started = time.perf_counter()
                loss, _ = batch_loss(engine, batch)
                forward_s = time.perf_counter() - forward_started
                engine.backward(loss)
                engine.step()
            window.add_micro(loss.item(), batch, stream.wait_s, forward_s)
            stream.wait_s = 0.0
            slots += torch.tensor([batch.num_tokens(), batch.num_slots()], dtype=torch.float64)
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
            end_of_epoch = progress.micro_steps_in_epoch == micro_in_epoch
            if eval_due(t.eval_every, progress.step, end_of_epoch) or progress.step == total_steps:
                result = evaluate_causal(engine, val_split, eval_batch)
                if record_evaluation(progress, result, t):
                    best_weights = capture_weights(engine.module)
                if is_rank_zero:
                    reporter.report(
                        {"event": "eval", "step": progress.step, "epoch": round(epoch_float, 4)}
                        | result.metrics("val")
                        | {"best_step": progress.best_step}
                    )
                if prompts:
                    samples = generate_samples(engine, prompts, t.generate_max_new_tokens, eos_id)
                    if is_rank_zero:
                        _send_samples(sink, progress.step, prompts, samples, spec.model_dir)
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
    test_result = evaluate_causal(engine, test_split, eval_batch)
    state = engine.consolidated_state_dict()
    dist.all_reduce(slots)
    summary = run_facts | {
        "best_validation": progress.best_val_metrics | {"step": progress.best_step},
        "test": test_result.summary(),
        "train_token_slot_efficiency": float(slots[0] / slots[1]) if slots[1] else None,
        "steps": progress.step,
        "epochs_completed": progress.epoch,
        "stopped_early": progress.stopped_early,
        "worker_wall_s": time.perf_counter() - wall_start,
    }
    if is_rank_zero:
        with tempfile.TemporaryDirectory(prefix="ftlaunch-export-") as tmp:
            sink.put_dir(save_causal_lm(state, spec, Path(tmp) / "model"), "model")
        reporter.report({"event": "summary", **summary})
    dist.barrier()  # nobody leaves before rank 0 has delivered the model
    if checkpoints:
        checkpoints.cleanup()
    engine.destroy()
    return summary


def _send_samples(
    sink: ArtifactSink,
    step: int,
    prompts: list[list[int]],
    samples: list[list[int]],
    model_dir: str,
) -> None:
    """samples/step-N.jsonl on the head: prompt and greedy continuation, as text and token ids."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    with tempfile.TemporaryDirectory(prefix="ftlaunch-samples-") as tmp:
        path = Path(tmp) / "samples.jsonl"
        with path.open("w") as fh:
            for prompt, sample in zip(prompts, samples, strict=True):
                row = {
                    "step": step,
                    "prompt": tokenizer.decode(prompt),
                    "generated": tokenizer.decode(sample),
                    "generated_ids": sample,
                }
                fh.write(json.dumps(row) + "\n")
        sink.put_file(path, f"samples/step-{step}.jsonl")
