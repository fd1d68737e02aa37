"""`ftlaunch run`: validate, prepare data, start or reach the cluster, train, commit results."""

from __future__ import annotations

import contextlib
import json
import os
import time
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console

from cluster.auth.mode import check_closed
from cluster.auth.secrets import unlisted_warnings
from cluster.ray.embedded import EmbeddedCluster, launch_embedded
from launcher.commands.plan import check_fits
from launcher.config_loading import dump_job_config, load_job_config
from launcher.data.carve import carve_validation
from launcher.data.causal import CausalFormat
from launcher.data.digests import InputDigests
from launcher.data.prepared import check_local_shards, check_prepared, load_prepared
from launcher.data.sources import SplitSource, known_label_names
from launcher.data.tokenize import TokenizeOptions, default_cache_root, prepare_split
from launcher.errors import UserError
from launcher.hub import is_hub_dataset, resolve_hub_dataset
from launcher.lock import output_lock
from launcher.models import read_max_positions, resolve_model_path
from launcher.peft_targets import check_target_modules
from launcher.progress import RunDisplay, summary_table
from launcher.resume import (
    check_checkpoint_uri,
    checkpoint_state,
    choose_resume_tag,
    config_fingerprint,
    keep_global_batch,
)
from launcher.rundir import (
    check_apart,
    check_output_dir,
    claim_output_dir,
    commit_run,
    create_staging,
    new_run_id,
)
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
from trainer.formats.signing import (
    CheckpointSigning,
    SigningKeyError,
    default_key_file,
    ensure_key_file,
)

if TYPE_CHECKING:
    from cluster.ray.backend import RayBackend as Backend

SPLITS = ("train", "validation", "test")


@dataclass(frozen=True)
class RunRequest:
    """What `ftlaunch run` was asked, option by option."""

    config: Path
    overrides: list[str] = field(default_factory=list)
    address: str | None = None
    resume: bool = False
    resume_fallback: bool = False
    trust_checkpoint: Path | None = None  # a checkpoint the user vouches for (implies resume)
    insecure: bool = False  # allow a Ray without token authentication
    force: bool = False  # start even if the plan says the ranks run out of memory


def run_from_file(
    request: RunRequest, console: Console, backend: Backend | None = None
) -> dict[str, Any]:
    """Everything `ftlaunch run` does; returns the summary. With `backend` (one already entered,
    as `ftlaunch scale-test` shares one cluster between its runs) the job runs on it.

    Raises:
        UserError: bad config, data or model, an output.dir that is not ftlaunch's or overlaps
            the inputs, a checkpoint that cannot be resumed, a job the plan says cannot fit
            (exit 2).
        cluster.errors.ClusterError: unreachable or open cluster, impossible placement (exit 2).
        cluster.errors.TrainingFailed: a worker failed (exit 1).
    """
    job = load_job_config(request.config, request.overrides)
    check_closed(version("ray"), os.environ, request.insecure)  # before anything is written
    warn = Console(stderr=True, highlight=False, soft_wrap=True).print
    for warning in unlisted_warnings(os.environ, job.cluster.secret_env):
        warn(warning, markup=False)
    if request.address:
        job = job.model_copy(
            update={"cluster": job.cluster.model_copy(update={"address": request.address})}
        )
    model_dir = resolve_model_path(job.model.path)
    output_dir = Path(job.output.dir).expanduser().resolve()  # Ray actors run in other directories
    check_apart(output_dir, input_paths(job, model_dir))
    check_output_dir(output_dir)
    check_checkpoint_uri(job)
    _check_max_length(job, model_dir)
    check_target_modules(job.peft, model_dir)
    planned = check_fits(job, model_dir, console.print, refuse=not request.force)
    planned_peak = planned.rank.peak_bytes if planned is not None else None
    # The embedded Ray comes up (seconds) while the data is checked and prepared.
    early = None if job.cluster.address or backend else launch_embedded(job.cluster)
    try:
        return _prepare_and_train(
            request, job, model_dir, output_dir, console, planned_peak, early or backend
        )
    finally:
        if early is not None:
            early.stop(grace_s=0)  # a no-op once the backend stopped it; else never used


def _prepare_and_train(
    request: RunRequest,
    job: JobConfig,
    model_dir: Path,
    output_dir: Path,
    console: Console,
    planned_peak: int | None,
    cluster: EmbeddedCluster | Backend | None,
) -> dict[str, Any]:
    warn = Console(stderr=True, highlight=False, soft_wrap=True).print
    label_names, locations, train_rows = prepare_splits(job, model_dir, console)
    _check_train_fills_a_step(job, train_rows)
    run_id = new_run_id(job.name)
    # One run per output.dir, before anything in it is read or written (checkpoints included).
    claim_output_dir(output_dir)
    with output_lock(output_dir, run_id):
        fingerprint = config_fingerprint(job, label_names)
        signing = checkpoint_signing(output_dir, request.trust_checkpoint)
        resume_tag = choose_resume_tag(
            output_dir,
            request.resume or request.resume_fallback or signing.trusted is not None,
            fingerprint,
            job.output.keep_last,
            signing=signing,
            fallback=request.resume_fallback,
            warn=warn,
            checkpoint_uri=job.output.checkpoint_uri,
        )
        if resume_tag:
            where = (job.output.checkpoint_uri or "").split("?")[0] or output_dir / CHECKPOINT_DIR
            console.print(f"resuming from {where}/{resume_tag}")
            state = checkpoint_state(output_dir, resume_tag, job.output.checkpoint_uri)
            job, note = keep_global_batch(job, state)
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
        return train_and_commit(
            spec, output_dir, console, signing, request.insecure, planned_peak, cluster
        )


def input_paths(job: JobConfig, model_dir: Path) -> dict[str, Path]:
    """The run's local inputs (field -> resolved path), which output.dir must keep apart from."""
    paths = {"model.path": model_dir.resolve()}
    for name in SPLITS:
        location = getattr(job.data, name)
        if not is_remote_uri(location):
            paths[f"data.{name}"] = Path(location).expanduser().resolve()
    return paths


def checkpoint_signing(output_dir: Path, trusted: Path | None) -> CheckpointSigning:
    """How this output.dir's checkpoints are signed; `trusted` must be one of them.

    Raises:
        UserError: an unusable signing key, or a --trust-checkpoint outside output.dir.
    """
    try:
        key_file = ensure_key_file(default_key_file())
    except (SigningKeyError, OSError) as exc:
        raise UserError(f"checkpoint signing key: {exc}") from None
    tag = None
    if trusted is not None:
        path = trusted.expanduser().resolve()
        if path.parent != output_dir / CHECKPOINT_DIR or not path.is_dir():
            raise UserError(
                f"--trust-checkpoint: {trusted} is not a checkpoint of output.dir "
                f"(expected {output_dir / CHECKPOINT_DIR}/step-N)"
            )
        tag = path.name
    return CheckpointSigning(str(key_file), str(output_dir), trusted=tag)


def prepare_splits(
    job: JobConfig, model_dir: Path, console: Console
) -> tuple[list[str], dict[str, str], int]:
    """Resolve train/validation/test to prepared shard locations, tokenizing raw files once.

    Each split is a raw file (tokenized into the cache), a Hub dataset `hf://...` (files from
    the Hugging Face cache, then tokenized), a prepared directory, or a pyarrow.fs URI of a
    prepared directory; validation may be carved from raw train (data.validation_split).
    The label set comes from train. Returns (labels, locations, train rows).
    """
    d = job.data
    cache_root = Path(d.cache_dir).expanduser() if d.cache_dir else default_cache_root()
    digests = InputDigests(cache_root)
    prepared = {name: _prepared(job, name) for name in SPLITS}
    raw = {name: _raw_source(job, name) for name in SPLITS if prepared[name] is None}
    causal = causal_format(job)
    if d.validation_split is not None:
        if "train" not in raw:
            raise UserError(
                "data.validation_split: needs a raw data.train (a prepared split is final; "
                "prepare a validation split with `ftlaunch prepare` instead)"
            )
        raw["train"], raw["validation"] = carve_validation(
            raw["train"], d.validation_split, job.training.seed, causal is None, cache_root, digests
        )
    train_manifest = prepared["train"]
    if causal is not None:
        label_names = []  # token labels live in the shards
    elif train_manifest is not None:
        label_names = train_manifest.label_names
    else:
        label_names = known_label_names(raw["train"], digests)
    locations: dict[str, str] = {}
    rows: dict[str, int] = {}
    for name in SPLITS:
        manifest = prepared[name]
        if manifest is None:
            options = TokenizeOptions(model_dir, d.max_length, label_names, causal=causal)
            split = prepare_split(raw[name], name, options, cache_root, digests)
            location, manifest = str(split.directory), split.manifest
            check_local_shards(f"data.{name}", split.directory, manifest)
            state = "cached" if split.reused else "tokenized"
        else:
            location = str(getattr(d, name))
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
    digests.save()
    return label_names, locations, rows["train"]


def _prepared(job: JobConfig, name: str) -> ShardManifest | None:
    """The manifest of a prepared split; None for raw files, Hub datasets and carved splits."""
    location = getattr(job.data, name)
    if location is None or is_hub_dataset(location):
        return None
    return load_prepared(f"data.{name}", location)


def _raw_source(job: JobConfig, name: str) -> SplitSource:
    d = job.data
    causal = causal_format(job)
    location = getattr(d, name) or d.train  # validation carved from train: replaced later
    field = f"data.{name}"
    paths = (
        resolve_hub_dataset(location, field)
        if is_hub_dataset(location)
        else (Path(location).expanduser(),)
    )
    return SplitSource(
        field, paths, d.text_column, d.label_column, causal.columns() if causal else ()
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


def train_and_commit(
    spec: RunSpec,
    output_dir: Path,
    console: Console,
    signing: CheckpointSigning | None = None,
    insecure: bool = False,
    planned_peak: int | None = None,
    cluster: EmbeddedCluster | Backend | None = None,
) -> dict[str, Any]:
    """Train on the cluster, commit the run. `cluster`: the embedded Ray launched already, or a
    backend already entered (`ftlaunch scale-test` shares one between its runs).

    Raises:
        cluster.errors.ClusterError: unreachable or open cluster, impossible placement.
        cluster.errors.TrainingFailed: a worker failed.
    """
    from cluster.registry import backend_for

    started = time.perf_counter()
    claim_output_dir(output_dir)
    staging = create_staging(output_dir, spec.run_id)
    (staging / CONFIG_FILE).write_text(dump_job_config(spec.job))
    if spec.resume_tag:
        carry_metrics_history(output_dir, staging, int(spec.resume_tag.split("-")[1]))
    console.print(f"run {spec.run_id}: live metrics in {staging / 'metrics.jsonl'}")
    early = cluster if isinstance(cluster, EmbeddedCluster) else None
    entered = None if cluster is None or isinstance(cluster, EmbeddedCluster) else cluster
    with (
        contextlib.nullcontext(entered)
        if entered is not None
        else backend_for(spec.job.cluster, staging, insecure, early) as backend,
        RunDisplay(console) as display,
    ):
        head_stats = backend.run(
            spec, staging, output_dir / CHECKPOINT_DIR, display.update, signing=signing
        )
    summary = display.latest.get("summary")
    if summary is None:
        raise RuntimeError(
            f"training finished without a summary; partial results kept in {staging}"
        )
    summary = {k: v for k, v in summary.items() if k != "event"} | head_stats
    summary["memory"] = memory_summary(summary.get("memory"), planned_peak)
    summary["wall_s"] = time.perf_counter() - started
    (staging / SUMMARY_FILE).write_text(json.dumps(summary, indent=2) + "\n")
    commit_run(staging, output_dir)
    console.print(summary_table(summary))
    console.print(f"model: {output_dir / MODEL_DIR}")
    return summary


def memory_summary(measured: dict[str, Any] | None, planned_peak: int | None) -> dict[str, Any]:
    """summary.json's `memory`: the plan's per-rank peak next to the largest one measured, and
    planned / measured (1.0: exact; below 1: the plan was too low)."""
    memory = dict(measured or {})
    memory["planned_peak_bytes"] = planned_peak
    got = memory.get("measured_peak_bytes")
    memory["ratio"] = round(planned_peak / got, 3) if planned_peak and got else None
    return memory


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
