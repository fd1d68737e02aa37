"""`ftlaunch run`: validate, prepare data, start or reach the cluster, train, commit results."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from rich.console import Console

from launcher.config_loading import dump_job_config, load_job_config
from launcher.data.causal import CausalFormat
from launcher.data.prepared import check_prepared, load_prepared
from launcher.data.sources import SplitSource, collect_label_names
from launcher.data.tokenize import TokenizeOptions, default_cache_root, prepare_split
from launcher.errors import UserError
from launcher.models import read_max_positions, resolve_model_path
from launcher.peft_targets import check_target_modules
from launcher.progress import RunDisplay, summary_table
from launcher.resume import (
    checkpoint_state,
    choose_resume_tag,
    config_fingerprint,
    keep_global_batch,
)
from launcher.rundir import commit_run, create_staging, new_run_id
from trainer.config import JobConfig
from trainer.config.spec import RunSpec
from trainer.formats.rundir import (
    CHECKPOINT_DIR,
    CONFIG_FILE,
    METRICS_FILE,
    MODEL_DIR,
    STAGING_PREFIX,
    SUMMARY_FILE,
)
from trainer.formats.shards import ShardManifest, is_remote_uri

SPLITS = ("train", "validation", "test")


def run_from_file(
    config_path: Path,
    overrides: list[str],
    address: str | None,
    console: Console,
    resume: bool = False,
    resume_fallback: bool = False,
) -> dict[str, Any]:
    """Everything `ftlaunch run` does; returns the summary.

    Raises:
        UserError: bad config, data or model (exit 2).
        cluster.errors.ClusterError: unreachable cluster or impossible placement (exit 2).
        cluster.errors.TrainingFailed: a worker failed (exit 1).
    """
    job = load_job_config(config_path, overrides)
    if address:
        job = job.model_copy(
            update={"cluster": job.cluster.model_copy(update={"address": address})}
        )
    model_dir = resolve_model_path(job.model.path)
    _check_max_length(job, model_dir)
    check_target_modules(job.peft, model_dir)
    label_names, locations, train_rows = prepare_splits(job, model_dir, console)
    _check_train_fills_a_step(job, train_rows)
    run_id = new_run_id(job.name)
    output_dir = Path(job.output.dir).expanduser().resolve()  # Ray actors run in other directories
    fingerprint = config_fingerprint(job, label_names)
    resume_tag = choose_resume_tag(
        output_dir,
        resume or resume_fallback,
        fingerprint,
        job.output.keep_last,
        fallback=resume_fallback,
        warn=Console(stderr=True, highlight=False, soft_wrap=True).print,
    )
    if resume_tag:
        console.print(f"resuming from {output_dir / CHECKPOINT_DIR / resume_tag}")
        job, note = keep_global_batch(job, checkpoint_state(output_dir, resume_tag))
        if note:
            console.print(note)
    spec = RunSpec(
        job=job,
        model_dir=str(model_dir),
        split_dirs=locations,
        label_names=label_names,
        run_id=run_id,
        config_fingerprint=fingerprint,
        resume_tag=resume_tag,
    )
    return train_and_commit(spec, output_dir, console)


def prepare_splits(
    job: JobConfig, model_dir: Path, console: Console
) -> tuple[list[str], dict[str, str], int]:
    """Resolve train/validation/test to prepared shard locations, tokenizing raw files once.

    Each split is a raw file (tokenized into the cache), a prepared directory, or a pyarrow.fs
    URI of a prepared directory. The label set comes from train.
    Returns (labels, locations, train rows).
    """
    d = job.data
    cache_root = Path(d.cache_dir).expanduser() if d.cache_dir else default_cache_root()
    prepared = {name: load_prepared(f"data.{name}", getattr(d, name)) for name in SPLITS}
    train_manifest = prepared["train"]
    causal = causal_format(job)
    if causal is not None:
        label_names = []  # token labels live in the shards
    elif train_manifest is not None:
        label_names = train_manifest.label_names
    else:
        label_names = collect_label_names(_raw_source(job, "train"))
    locations: dict[str, str] = {}
    rows: dict[str, int] = {}
    for name in SPLITS:
        location, manifest = getattr(d, name), prepared[name]
        if manifest is None:
            options = TokenizeOptions(model_dir, d.max_length, label_names, causal=causal)
            split = prepare_split(_raw_source(job, name), name, options, cache_root)
            location, manifest = str(split.directory), split.manifest
            state = "cached" if split.reused else "tokenized"
        else:
            check_prepared(f"data.{name}", location, manifest, model_dir, label_names)
            _check_task(f"data.{name}", location, manifest, job)
            if not is_remote_uri(location):  # workers run in other directories
                location = str(Path(location).expanduser().resolve())
            state = "prepared"
        locations[name], rows[name] = location, manifest.total_rows
        efficiency = manifest.packing_efficiency()
        packed = f", packing efficiency {efficiency:.1%}" if efficiency else ""
        console.print(
            f"data.{name}: {manifest.total_rows:,} rows, {manifest.total_tokens:,} tokens{packed} ({state}: {location})"
        )
    return label_names, locations, rows["train"]


def _raw_source(job: JobConfig, name: str) -> SplitSource:
    d = job.data
    causal = causal_format(job)
    return SplitSource(
        f"data.{name}",
        (Path(getattr(d, name)).expanduser(),),
        d.text_column,
        d.label_column,
        causal.columns() if causal else (),
    )


def causal_format(job: JobConfig) -> CausalFormat | None:
    """The causal-LM data layout of this job (None for sequence classification)."""
    if not job.model.is_causal_lm():
        return None
    d = job.data
    return CausalFormat(
        d.format, d.packing, d.text_column, d.prompt_column, d.completion_column, d.messages_column
    )


def _check_task(field: str, location: str, manifest: ShardManifest, job: JobConfig) -> None:
    """A prepared split must be of this task and, for causal-lm, of data.format and data.packing."""
    if manifest.task != job.model.task:
        raise UserError(
            f"{field}: {location} was prepared for {manifest.task}, but model.task is "
            f"{job.model.task}; prepare it again for this task"
        )
    d = job.data
    if job.model.is_causal_lm() and (manifest.data_format, manifest.packing) != (
        d.format,
        d.packing,
    ):
        raise UserError(
            f"{field}: {location} was prepared with format {manifest.data_format}, packing "
            f"{str(manifest.packing).lower()}, but data.format is {d.format} and data.packing is "
            f"{str(d.packing).lower()}; prepare it again (ftlaunch prepare --format ... --packing)"
        )


def train_and_commit(spec: RunSpec, output_dir: Path, console: Console) -> dict[str, Any]:
    from cluster.registry import backend_for

    started = time.perf_counter()
    staging = create_staging(output_dir, spec.run_id)
    (staging / CONFIG_FILE).write_text(dump_job_config(spec.job))
    if spec.resume_tag:
        carry_metrics_history(output_dir, staging, int(spec.resume_tag.split("-")[1]))
    console.print(f"run {spec.run_id}: live metrics in {staging / 'metrics.jsonl'}")
    with (
        backend_for(spec.job.cluster, token_dir=staging) as backend,
        RunDisplay(console) as display,
    ):
        head_stats = backend.run(spec, staging, output_dir / CHECKPOINT_DIR, display.update)
    summary = display.latest.get("summary")
    if summary is None:
        raise RuntimeError(
            f"training finished without a summary; partial results kept in {staging}"
        )
    summary = {k: v for k, v in summary.items() if k != "event"} | head_stats
    summary["wall_s"] = time.perf_counter() - started
    (staging / SUMMARY_FILE).write_text(json.dumps(summary, indent=2) + "\n")
    commit_run(staging, output_dir)
    console.print(summary_table(summary))
    console.print(f"model: {output_dir / MODEL_DIR}")
    return summary


def _check_max_length(job: JobConfig, model_dir: Path) -> None:
    limit = read_max_positions(model_dir)
    if limit and job.data.max_length > limit:
        raise UserError(
            f"data.max_length: {job.data.max_length} exceeds the model's position limit {limit}"
        )


def _check_train_fills_a_step(job: JobConfig, rows: int) -> None:
    needed = job.global_batch_size()
    if rows < needed:
        raise UserError(
            f"data.train: {rows} rows cannot fill one optimizer step of {needed} samples "
            "(training.micro_batch_size x training.grad_accum x cluster.num_workers)"
        )


def carry_metrics_history(output_dir: Path, staging: Path, resume_step: int) -> None:
    """A resumed run's metrics.jsonl starts with the history up to its checkpoint, taken from the
    newest earlier metrics file (a committed run, or the staging area of one that stopped)."""
    candidates = [
        output_dir / METRICS_FILE,
        *output_dir.glob(f"{STAGING_PREFIX}*/{METRICS_FILE}"),
    ]
    existing = [p for p in candidates if p.is_file() and p.parent != staging]
    if not existing:
        return
    newest = max(existing, key=lambda p: p.stat().st_mtime)
    kept = [line for line in newest.read_text().splitlines() if _step_of(line) <= resume_step]
    (staging / METRICS_FILE).write_text("".join(line + "\n" for line in kept))


def _step_of(line: str) -> int:
    try:
        return int(json.loads(line).get("step", 0))
    except (json.JSONDecodeError, TypeError, ValueError, AttributeError):
        return 10**12  # unreadable lines are dropped
