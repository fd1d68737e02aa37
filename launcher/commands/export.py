"""`ftlaunch export RUN_DIR [--checkpoint step-N] --out DIR`: pick a complete checkpoint on the
head and consolidate it into a Hugging Face model directory.

The consolidation needs torch, which the launcher never imports, so it runs as
`python -m trainer.export.consolidate` in a child process; its one-line errors are passed through.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from launcher.commands.run import checkpoint_signing
from launcher.config_loading import load_job_config
from launcher.errors import UserError
from launcher.resume import listed_checkpoints
from trainer.formats.checkpoints import CheckpointStore, CorruptCheckpointError
from trainer.formats.names import UnsafeNameError
from trainer.formats.object_checkpoints import open_checkpoint_store
from trainer.formats.rundir import ADAPTER_NOTE, CHECKPOINT_DIR, CONFIG_FILE

EXPORT_STAGING = ".export-checkpoint"  # in RUN_DIR: a checkpoint downloaded from the store


def choose_checkpoint(run_dir: Path, tag: str | None) -> Path:
    """The local directory of the checkpoint to export: in RUN_DIR/checkpoints, or downloaded
    (verified) from the run's `output.checkpoint_uri` into RUN_DIR/.export-checkpoint/.

    Raises:
        UserError: no such checkpoint, or one in the store that fails its signature or hashes.
    """
    uri = _checkpoint_uri(run_dir)
    store = open_checkpoint_store(uri or run_dir / CHECKPOINT_DIR)
    complete = dict(listed_checkpoints(store))
    if not complete:
        raise UserError(f"RUN_DIR: no complete checkpoint in {store.where}")
    if tag is None:
        tag = list(complete)[-1]  # oldest commit first
    if tag not in complete:
        raise UserError(
            f"--checkpoint: {tag!r} is not a complete checkpoint in {store.where} (have: {', '.join(complete)})"
        )
    if isinstance(store, CheckpointStore):
        return store.root / tag
    store.signing = checkpoint_signing(run_dir, None)  # a bucket may hold anyone's objects
    target = run_dir / EXPORT_STAGING / tag
    shutil.rmtree(run_dir / EXPORT_STAGING, ignore_errors=True)
    try:
        return store.download_checkpoint(tag, target)
    except (CorruptCheckpointError, UnsafeNameError, OSError) as exc:
        shutil.rmtree(run_dir / EXPORT_STAGING, ignore_errors=True)
        raise UserError(f"--checkpoint: {exc}") from None


def _checkpoint_uri(run_dir: Path) -> str | None:
    """The run's `output.checkpoint_uri`, from the config.yaml it wrote."""
    config = run_dir / CONFIG_FILE
    return load_job_config(config).output.checkpoint_uri if config.is_file() else None


def check_out(out: Path, run_dir: Path, overwrite: bool) -> None:
    """`--out` gets model files written into it: refuse one that holds anything unless
    `overwrite`, and one inside the run directory's checkpoints in any case.

    Raises:
        UserError: naming --out.
    """
    checkpoints = (run_dir / CHECKPOINT_DIR).resolve()
    target = out.expanduser().resolve()
    if target == checkpoints or checkpoints in target.parents or target in checkpoints.parents:
        raise UserError(f"--out: {out} overlaps the run's checkpoints ({checkpoints})")
    if out.exists() and not out.is_dir():
        raise UserError(f"--out: {out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise UserError(
            f"--out: {out} is not empty; pass --overwrite to write the model into it anyway "
            "(files of the same names are replaced, others kept)"
        )


def run_export(
    run_dir: Path, tag: str | None, out: Path, adapter_only: bool = False, overwrite: bool = False
) -> tuple[int, str]:
    """Returns (exit code, message).

    Raises:
        UserError: no such checkpoint, or an --out that is not empty (without `overwrite`).
    """
    check_out(out, run_dir, overwrite)
    checkpoint = choose_checkpoint(run_dir, tag)
    flags = ["--adapter-only"] if adapter_only else []
    try:
        result = subprocess.run(
            [sys.executable, "-m", "trainer.export.consolidate", str(checkpoint), str(out), *flags],
            capture_output=True,
            text=True,
        )
    finally:
        shutil.rmtree(run_dir / EXPORT_STAGING, ignore_errors=True)  # a downloaded copy
    if result.returncode != 0:
        lines = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
        message = (
            lines[-1].removeprefix("error: ") if lines else result.stderr.strip().splitlines()[-1]
        )
        return (2 if lines else 1), message
    if (out / ADAPTER_NOTE).is_file():  # asked for, or a method that cannot merge
        return 0, (
            f"exported {checkpoint.name} to {out} as a peft adapter, not a merged model "
            f"(load it on its base with PeftModel.from_pretrained; see {ADAPTER_NOTE}); reload verified"
        )
    return (
        0,
        f"exported {checkpoint.name} to {out} (safetensors, config, tokenizer; reload verified)",
    )
