"""Decide where a run starts: fresh, or from the newest complete checkpoint on the head (`--resume`).

A fresh run refuses an output directory that already holds checkpoints (they would be mixed up
with the new run's), and a resume refuses a checkpoint whose manifest is not signed for this
output.dir (trainer/formats/signing.py) unless the user vouches for it with `--trust-checkpoint`,
one written for another model, world size or incompatible config, or one whose files no longer
match its manifest.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from launcher.errors import UserError
from trainer.config import JobConfig
from trainer.config.schema import grad_accum_for
from trainer.formats.checkpoints import (
    CheckpointStore,
    CorruptCheckpointError,
    UnsignedCheckpointError,
)
from trainer.formats.object_checkpoints import (
    ObjectCheckpointStore,
    open_checkpoint_store,
    probe_writable,
)
from trainer.formats.rundir import CHECKPOINT_DIR
from trainer.formats.signing import CheckpointSigning


def config_fingerprint(job: JobConfig, label_names: list[str]) -> str:
    """What must not change between a checkpoint and the run resuming it.

    The number of workers is not part of it: a checkpoint resumes on any number (its engine
    state is resharded at load time), with the global batch kept by adjusting grad_accum
    (`keep_global_batch`), so neither is compared here.
    """
    relevant = {
        # Where a node caches the model and which attention kernel computes it do not change
        # what a checkpoint holds (and leaving them out keeps older checkpoints resumable).
        "model": job.model.model_dump(exclude={"attn_implementation", "node_cache_dir"}),
        "peft": job.peft.model_dump(),
        "zero_stage": job.engine.zero_stage,
        "micro_batch_size": job.training.micro_batch_size,
        "seed": job.training.seed,
        "labels": label_names,
    }
    if job.training.precision != "fp32":  # DeepSpeed's mixed-precision state differs in kind
        relevant["precision"] = job.training.precision
    if job.engine.backend != "deepspeed":  # checkpoint layouts differ per engine and strategy
        relevant["engine"] = [job.engine.backend, job.engine.strategy]
    if job.model.is_causal_lm():  # what the stored rows are; added only here so classification
        d = job.data  # fingerprints (and their checkpoints) stay valid
        relevant["causal_data"] = [d.format, d.packing, d.max_length]
    return hashlib.sha256(json.dumps(relevant, sort_keys=True).encode()).hexdigest()[:16]


def check_checkpoint_uri(job: JobConfig) -> None:
    """An object store for checkpoints must take a write now, before anything starts.

    Raises:
        UserError: naming output.checkpoint_uri and why the store refused.
    """
    uri = job.output.checkpoint_uri
    if uri is None:
        return
    try:
        probe_writable(uri)
    except (OSError, ValueError) as exc:
        reason = " ".join(str(exc).split()) or type(exc).__name__
        where = uri.split("?")[0]  # the query may hold credentials
        raise UserError(f"output.checkpoint_uri: cannot write to {where}: {reason}") from None


def listed_checkpoints(
    store: CheckpointStore | ObjectCheckpointStore,
) -> list[tuple[str, dict[str, Any]]]:
    """The store's complete checkpoints, oldest first.

    Raises:
        UserError: the store could not be listed (unreachable, refused, no bucket): never
            taken as "no checkpoint", which would start the run over from step 0.
    """
    try:
        return store.complete()
    except OSError as exc:
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise UserError(
            f"output.checkpoint_uri: cannot list the checkpoints in {store.where}: {reason}"
        ) from None


def choose_resume_tag(
    output_dir: Path,
    resume: bool,
    fingerprint: str,
    keep_last: int,
    *,
    signing: CheckpointSigning,
    fallback: bool = False,
    warn: Callable[[str], None] = print,
    checkpoint_uri: str | None = None,
) -> str | None:
    """The checkpoint tag to start from (None: fresh start), among output.dir's checkpoints or
    those in `checkpoint_uri` (an object store).

    The newest complete checkpoint's signature is checked, then its files. An unsigned one is
    refused unless it is `signing.trusted` (even with `fallback`: it may be anyone's). If its
    files are corrupted, the run is refused unless `fallback` is set; then older complete
    checkpoints are tried, newest first, and each one skipped is named through `warn`.
    Corrupted checkpoints are left in place (never deleted).

    Raises:
        UserError: a fresh start over existing checkpoints, nothing to resume, or a checkpoint that
            is unsigned, does not fit this job or fails its checksums.
    """
    store = open_checkpoint_store(checkpoint_uri or output_dir / CHECKPOINT_DIR, keep_last, signing)
    complete = listed_checkpoints(store)
    if not resume:
        if complete:
            raise UserError(
                f"output.dir: {store.where} holds checkpoints of an earlier run ({complete[-1][0]}); "
                "pass --resume to continue it, or choose another output.dir"
            )
        return None
    if not complete:
        raise UserError(f"--resume: no complete checkpoint in {store.where}")
    for tag, manifest in reversed(complete):
        try:
            store.check_signed(tag)  # before anything in the manifest is believed
            _check_fingerprint(store.describe(tag), manifest, fingerprint)
            store.verify(tag)
            return tag
        except UnsignedCheckpointError as exc:
            raise UserError(
                f"--resume: {exc}; if you trust it, pass --trust-checkpoint {store.describe(tag)}"
            ) from None
        except CorruptCheckpointError as exc:
            if not fallback:
                raise UserError(
                    f"--resume: {exc}; pass --resume-fallback to start from the newest older "
                    "checkpoint that verifies, or delete that checkpoint directory"
                ) from None
            warn(f"warning: skipping {tag}: {exc}")
    raise UserError(f"--resume-fallback: no checkpoint in {store.where} passes verification")


def _check_fingerprint(path: str, manifest: dict, fingerprint: str) -> None:
    written_for = manifest["state"].get("config_fingerprint")
    if written_for != fingerprint:
        raise UserError(
            f"--resume: {path} was written by a different model or incompatible config "
            f"(fingerprint {written_for} != {fingerprint}: model, peft, engine, zero_stage, "
            "micro_batch_size, seed and labels must match)"
        )


def keep_global_batch(job: JobConfig, state: dict) -> tuple[JobConfig, str | None]:
    """The job adjusted to the global batch of the checkpoint it resumes (its `state` in the
    manifest), and a line saying what changed (None when nothing did). Pure.

    A checkpoint written by N workers resumes on any number: the number of samples per optimizer
    step stays the checkpoint's, so the learning-rate schedule and the data stream's step
    boundaries continue unchanged; grad_accum absorbs the change of workers.

    Raises:
        UserError: the new micro_batch_size x workers does not divide the checkpoint's batch.
    """
    saved = JobConfig.model_validate(state["spec"]["job"])
    wanted, current = saved.global_batch_size(), job.global_batch_size()
    if wanted == current:
        return job, None
    t, workers = job.training, job.cluster.max_workers()
    try:
        grad_accum = grad_accum_for(wanted, t.micro_batch_size, workers)
    except ValueError as exc:
        raise UserError(f"{exc}; the checkpoint was written with {_batch_of(saved)}") from None
    adjusted = job.model_copy(update={"training": t.model_copy(update={"grad_accum": grad_accum})})
    note = (
        f"keeping the checkpoint's global batch of {wanted} samples ({_batch_of(saved)}): "
        f"training.grad_accum {t.grad_accum} -> {grad_accum} on {workers} workers"
    )
    return adjusted, note


def _batch_of(job: JobConfig) -> str:
    t = job.training
    return (
        f"micro_batch_size {t.micro_batch_size} x grad_accum {t.grad_accum} x "
        f"{job.cluster.max_workers()} workers"
    )


def checkpoint_state(output_dir: Path, tag: str, checkpoint_uri: str | None = None) -> dict:
    """The training state a committed checkpoint's manifest records (already verified).

    Raises:
        UserError: the store could not be listed.
    """
    store = open_checkpoint_store(checkpoint_uri or output_dir / CHECKPOINT_DIR)
    return dict(listed_checkpoints(store))[tag]["state"]
