"""`ftlaunch run`: validate, prepare data, start or reach the cluster, train, commit results."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from rich.console import Console

from launcher.config_loading import dump_job_config, load_job_config
from launcher.errors import UserError
from launcher.models import read_max_positions, resolve_model_path
from launcher.prepare import (
    PreparedSplit,
    SplitSource,
    collect_label_names,
    default_cache_root,
    prepare_split,
)
from launcher.progress import RunDisplay, summary_table
from launcher.rundir import commit_run, create_staging, new_run_id
from trainer.config import JobConfig
from trainer.config.spec import RunSpec

SPLITS = ("train", "validation", "test")


def run_from_file(
    config_path: Path, overrides: list[str], address: str | None, console: Console
) -> dict[str, Any]:
    """Everything `ftlaunch run` does; returns the summary.

    Raises:
        UserError: bad config, data or model (exit 2).
        cluster.ray_backend.ClusterError: unreachable cluster or impossible placement (exit 2).
        cluster.ray_backend.TrainingFailed: a worker failed (exit 1).
    """
    job = load_job_config(config_path, overrides)
    if address:
        job = job.model_copy(
            update={"cluster": job.cluster.model_copy(update={"address": address})}
        )
    model_dir = resolve_model_path(job.model.path)
    _check_max_length(job, model_dir)
    label_names, prepared = prepare_splits(job, model_dir, console)
    _check_train_fills_a_step(job, prepared["train"])
    run_id = new_run_id(job.name)
    output_dir = Path(job.output.dir).expanduser().resolve()  # Ray actors run in other directories
    spec = RunSpec(
        job=job,
        model_dir=str(model_dir),
        split_dirs={name: str(p.directory) for name, p in prepared.items()},
        label_names=label_names,
        run_id=run_id,
    )
    return train_and_commit(spec, output_dir, console)


def prepare_splits(
    job: JobConfig, model_dir: Path, console: Console
) -> tuple[list[str], dict[str, PreparedSplit]]:
    """Tokenize train/validation/test into cached Arrow shards (label set from train)."""
    d = job.data
    cache_root = Path(d.cache_dir).expanduser() if d.cache_dir else default_cache_root()
    sources = {
        name: SplitSource(
            f"data.{name}", Path(getattr(d, name)).expanduser(), d.text_column, d.label_column
        )
        for name in SPLITS
    }
    label_names = collect_label_names(sources["train"])
    prepared = {}
    for name, source in sources.items():
        split = prepare_split(source, name, model_dir, d.max_length, label_names, cache_root)
        prepared[name] = split
        m = split.manifest
        state = "cached" if split.reused else "tokenized"
        console.print(
            f"data.{name}: {m.total_rows:,} rows, {m.total_tokens:,} tokens ({state}: {split.directory})"
        )
    return label_names, prepared


def train_and_commit(spec: RunSpec, output_dir: Path, console: Console) -> dict[str, Any]:
    from cluster.registry import backend_for

    started = time.perf_counter()
    staging = create_staging(output_dir, spec.run_id)
    (staging / "config.yaml").write_text(dump_job_config(spec.job))
    console.print(f"run {spec.run_id}: live metrics in {staging / 'metrics.jsonl'}")
    with backend_for(spec.job.cluster) as backend, RunDisplay(console) as display:
        backend.run(spec, staging, display.update)
    summary = display.latest.get("summary")
    if summary is None:
        raise RuntimeError(
            f"training finished without a summary; partial results kept in {staging}"
        )
    summary = {k: v for k, v in summary.items() if k != "event"} | {
        "wall_s": time.perf_counter() - started
    }
    (staging / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    commit_run(staging, output_dir)
    console.print(summary_table(summary))
    console.print(f"model: {output_dir / 'model'}")
    return summary


def _check_max_length(job: JobConfig, model_dir: Path) -> None:
    limit = read_max_positions(model_dir)
    if limit and job.data.max_length > limit:
        raise UserError(
            f"data.max_length: {job.data.max_length} exceeds the model's position limit {limit}"
        )


def _check_train_fills_a_step(job: JobConfig, train: PreparedSplit) -> None:
    rows, needed = train.manifest.total_rows, job.global_batch_size()
    if rows < needed:
        raise UserError(
            f"data.train: {rows} rows cannot fill one optimizer step of {needed} samples "
            "(training.micro_batch_size x training.grad_accum x cluster.num_workers)"
        )
