"""`ftlaunch export RUN_DIR [--checkpoint step-N] --out DIR`: pick a complete checkpoint on the
head and consolidate it into a Hugging Face model directory.

The consolidation needs torch, which the launcher never imports, so it runs as
`python -m trainer.export.consolidate` in a child process; its one-line errors are passed through.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from launcher.errors import UserError
from trainer.formats.checkpoints import CheckpointStore
from trainer.formats.rundir import ADAPTER_NOTE, CHECKPOINT_DIR


def choose_checkpoint(run_dir: Path, tag: str | None) -> Path:
    store = CheckpointStore(run_dir / CHECKPOINT_DIR)
    complete = dict(store.complete()) if store.root.is_dir() else {}
    if not complete:
        raise UserError(f"RUN_DIR: no complete checkpoint in {store.root}")
    if tag is None:
        return store.root / list(complete)[-1]  # oldest commit first
    if tag not in complete:
        raise UserError(
            f"--checkpoint: {tag!r} is not a complete checkpoint in {store.root} (have: {', '.join(complete)})"
        )
    return store.root / tag


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
    checkpoint = choose_checkpoint(run_dir, tag)
    check_out(out, run_dir, overwrite)
    flags = ["--adapter-only"] if adapter_only else []
    result = subprocess.run(
        [sys.executable, "-m", "trainer.export.consolidate", str(checkpoint), str(out), *flags],
        capture_output=True,
        text=True,
    )
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
