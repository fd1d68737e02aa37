"""One fine-tuning run on one rank, top to bottom, for every recipe:

    setup (data, model, engine) -> train_epochs (validation, early stopping, checkpoints,
    preemption) -> test the best weights -> save -> report

A recipe (trainer/recipes/) supplies what differs by task: how its splits are read, how the model
is built, how a batch becomes a loss, how a split is evaluated, and what is saved. The process
group (RANK/WORLD_SIZE/MASTER_ADDR) is already set up by whoever started the workers (Ray Train,
torchrun in the overhead benchmark, torch.multiprocessing in tests).
"""

from __future__ import annotations

import time
from typing import Any, Protocol

import torch
import torch.distributed as dist

from trainer.config.spec import RunSpec
from trainer.data.split import ShardedSplit
from trainer.engines import build_engine
from trainer.engines.base import check_precision, deepspeed_config
from trainer.engines.snapshot import restore_weights
from trainer.loop.context import Run
from trainer.loop.progress import StepPlan, plan_steps, seed_everything
from trainer.loop.saves import BackgroundSaves
from trainer.loop.train import Task, TrainOutcome, train_epochs
from trainer.loop.window import gather_peak_memory
from trainer.model.build import (
    LoadPlan,
    check_attn_implementation,
    count_parameters,
    load_plan,
    read_hidden_size,
)
from trainer.protocols import ArtifactSink, ShardStore, WorkerIO

SPLITS = ("train", "validation", "test")


class Recipe(Task, Protocol):
    """A task's recipe: the Task hooks the loop calls, plus setup and saving."""

    def open_split(self, store: ShardStore) -> ShardedSplit: ...

    def build_model(self, load: LoadPlan) -> torch.nn.Module:
        """The task model, built as `load` says (partitioned, empty, in which dtype)."""
        ...

    # Split and evaluation parameters are Any: each recipe takes its own kind (CausalSplit,
    # EvalResult, ...), which a Protocol parameter could not narrow to.
    def run_facts(self, train: Any) -> dict[str, Any]:
        """What summary.json says about this run beyond the common facts."""
        ...

    def test_facts(self, train: Any, test: Any, outcome: TrainOutcome) -> dict[str, Any]:
        """Summary fields computed after testing (baselines, efficiencies)."""
        ...

    def save(self, state: dict[str, torch.Tensor], test: Any, sink: ArtifactSink) -> None:
        """Rank 0: write the model (and predictions) and send them to the head."""
        ...


def run_recipe(spec: RunSpec, io: WorkerIO, recipe: Recipe) -> dict[str, Any]:
    """Fine-tune, test and save; returns the summary (also reported to the head by rank 0)."""
    job, t = spec.job, spec.job.training
    world, rank = dist.get_world_size(), dist.get_rank()
    torch.set_num_threads(max(1, int(job.cluster.cpus_per_worker)))
    seed_everything(t.seed)
    wall_start = time.perf_counter()

    # --- setup: data, model, engine
    train, validation, test = (recipe.open_split(io.open_store(spec.split_dirs[n])) for n in SPLITS)
    first_epoch = train.epoch_batches(0, t.seed, world, rank, t.micro_batch_size, train=True)
    plan = plan_steps(job, len(first_epoch), train.num_rows)
    check_precision(t.precision)
    check_attn_implementation(job.model.attn_implementation)
    hidden = read_hidden_size(spec.model_dir)
    ds_config = deepspeed_config(job, world, hidden) if job.engine.runs_deepspeed() else None
    model = recipe.build_model(load_plan(job, rank, ds_config))
    trainable, total = count_parameters(model)
    engine = build_engine(model, job, world, plan.total_steps)
    saves = BackgroundSaves(io.checkpoints) if io.checkpoints is not None else None
    run = Run(spec, io, engine, world, rank, saves)
    facts = common_facts(run, plan, train, trainable, total) | recipe.run_facts(train)
    run.report(start_record(plan) | facts)

    # --- train with periodic validation, early stopping, checkpoints and preemption
    outcome = train_epochs(run, recipe, train, validation, plan)
    if outcome.preempted:
        _finish(run, outcome.progress.step)
        return {"preempted": True, "step": outcome.progress.step, "tag": outcome.preempted_tag}

    # --- test the best weights, then save them
    run.enter("eval", outcome.progress.step)
    restore_weights(run.engine.module, outcome.best_weights)
    test_result = recipe.evaluate(run.engine, test)
    # Measured before the export: gathering the whole model on rank 0 to save it is a phase of
    # its own, after training (see docs/planning.md).
    memory = gather_peak_memory()
    state = run.engine.consolidated_state_dict()
    progress = outcome.progress
    summary = facts | {
        "best_validation": (progress.best_val_metrics or {}) | {"step": progress.best_step},
        "test": test_result.summary(),
        **recipe.test_facts(train, test_result, outcome),
        "steps": progress.step,
        "epochs_completed": progress.epoch,
        "stopped_early": progress.stopped_early,
        "world_size_changes": progress.world_size_changes,
        "worker_wall_s": time.perf_counter() - wall_start,
        "memory": memory,
    }
    run.enter("save", progress.step)
    if state is not None:  # rank 0 holds the consolidated weights
        recipe.save(state, test_result, io.artifacts)
    run.report({"event": "summary", **summary})
    dist.barrier()  # nobody leaves before rank 0 has delivered the model
    _finish(run, progress.step)
    return summary


def start_record(plan: StepPlan) -> dict[str, Any]:
    steps = {"total_steps": plan.total_steps, "steps_per_epoch": plan.steps_per_epoch}
    return {"event": "start"} | steps


def common_facts(
    run: Run, plan: StepPlan, train: ShardedSplit, trainable: int, total: int
) -> dict[str, Any]:
    """What summary.json says about every run, whatever the task."""
    job = run.spec.job
    trained = plan.micro_to_train() * job.training.micro_batch_size * run.world
    return {
        "world_size": run.world,
        "zero_stage": job.engine.zero_stage,
        "engine": run.engine.describe(),
        "peft_method": job.peft.method,
        "trainable_params": trainable,
        "total_params": total,
        "trainable_fraction": trainable / total,
        "precision": job.training.precision,
        "gradient_checkpointing": job.training.gradient_checkpointing,
        "train_samples_dropped_per_epoch": train.num_rows - trained,
    }


def _finish(run: Run, step: int) -> None:
    if run.saves is not None:
        run.saves.wait()  # the last save written and submitted (raises if it failed)
        run.saves.close()
    if run.io.checkpoints is not None:
        run.io.checkpoints.cleanup()  # raises if a checkpoint of this rank was not committed
    run.engine.destroy()
    run.enter("done", step)
