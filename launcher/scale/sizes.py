"""What `ftlaunch scale-test` runs at each size (pure): the worker counts, and the job overrides
that make one size of a weak or strong scaling test.

Weak scaling keeps each worker's work fixed (micro-batch and grad_accum as the job says), so the
global batch grows with the workers; strong scaling keeps the global batch of the job's launch
size and divides it over the workers: grad_accum first, the micro-batch only where the per-worker
share is not a multiple of it.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Literal

from launcher.errors import UserError
from trainer.config import JobConfig

Mode = Literal["weak", "strong"]
MODES: tuple[Mode, ...] = ("weak", "strong")


@dataclass(frozen=True)
class SizePlan:
    """One size of the test: its workers and the batch each optimizer step takes."""

    workers: int
    micro_batch_size: int
    grad_accum: int

    @property
    def global_batch(self) -> int:
        return self.workers * self.micro_batch_size * self.grad_accum

    def label(self) -> str:
        return f"w{self.workers}"


def parse_workers(text: str) -> list[int]:
    """`1,2,4` -> [1, 2, 4]: positive, strictly increasing worker counts.

    Raises:
        UserError: empty, not integers, below 1, or not strictly increasing (duplicates).
    """
    parts = [p.strip() for p in text.split(",")]
    if not text.strip() or any(not p for p in parts):
        raise UserError(f"--workers: {text!r} is not a comma-separated list like 1,2,4")
    try:
        sizes = [int(p) for p in parts]
    except ValueError:
        raise UserError(f"--workers: {text!r} holds a value that is not a whole number") from None
    if min(sizes) < 1:
        raise UserError(f"--workers: {text!r}: every worker count must be at least 1")
    if any(later <= earlier for earlier, later in itertools.pairwise(sizes)):
        raise UserError(
            f"--workers: {text!r} must be strictly increasing, without duplicates (e.g. 1,2,4)"
        )
    return sizes


def parse_mode(text: str) -> Mode:
    """Raises: UserError for anything but weak or strong."""
    for mode in MODES:
        if text == mode:
            return mode
    raise UserError(f"--mode: {text!r} is not one of {', '.join(MODES)}")


def plan_size(job: JobConfig, workers: int, mode: Mode) -> SizePlan:
    """The batch of one size. Strong scaling keeps the job's global batch (at its launch size).

    Raises:
        UserError: strong scaling, and the global batch cannot be split evenly over `workers`.
    """
    t = job.training
    if mode == "weak":
        return SizePlan(workers, t.micro_batch_size, t.grad_accum)
    global_batch = job.global_batch_size()
    if global_batch % workers:
        raise UserError(
            f"--workers: the global batch of {global_batch} samples (micro_batch_size "
            f"{t.micro_batch_size} x grad_accum {t.grad_accum} x {job.cluster.max_workers()} "
            f"workers) cannot be split over {workers} workers ({global_batch} / {workers} = "
            f"{global_batch / workers:g}); strong scaling needs worker counts that divide it"
        )
    per_worker = global_batch // workers
    # The largest micro-batch up to the job's that divides the worker's share: the same memory
    # per forward pass at most, the fewest accumulation steps.
    micro = next(m for m in range(min(t.micro_batch_size, per_worker), 0, -1) if not per_worker % m)
    return SizePlan(workers, micro, per_worker // micro)


def size_overrides(size: SizePlan, steps: int, output_dir: str) -> list[str]:
    """The `--set` overrides that make the job one size of the test: exactly `steps` optimizer
    steps, every step its own metrics window (log_every 1: the per-step figures the report needs;
    the window's gather runs between steps and is kept out of the step times), one validation at
    the end, no checkpoints (their saves are not what is measured), its own output.dir."""
    sets = {
        "cluster.num_workers": size.workers,
        "training.micro_batch_size": size.micro_batch_size,
        "training.grad_accum": size.grad_accum,
        "training.max_steps": steps,
        "training.epochs": steps,  # every epoch holds at least one step: max_steps decides
        "training.log_every": 1,
        "training.eval_every": steps,
        "training.checkpoint_every": "null",
        "training.early_stopping_patience": "null",
        "output.dir": "'" + output_dir.replace("'", "''") + "'",  # a YAML string, whatever it holds
    }
    return [f"{key}={value}" for key, value in sets.items()]
