"""The figures of a scaling test, from each size's metrics records (pure, no processes).

Each size runs with `log_every: 1`, so every "train" record of metrics.jsonl is one optimizer
step: its samples and tokens per second over the step (`window_s`), the slowest rank's step time
(`step_time_max_s`), and per rank the data wait, the forward's end (`rank_busy_s`: data wait +
forward), the seconds in backward and the optimizer step (`rank_backward_s`) and the peak memory
so far. The first `warmup` steps (allocator, caches, first collectives) are left out of every
steady-state figure.

Communication share, as measured here: the collectives of data parallelism (the gradient
all-reduce, ZeRO's reduce-scatter and all-gather) run inside backward and the optimizer step,
and a rank's time there is its own compute plus the collectives (including the wait for slower
ranks). The compute part per sample is taken from the smallest size (with one worker there is no
collective at all); what a size spends there beyond that compute, for the samples its ranks
process, is its communication. Its share is that time over the step time. With a smallest size
above one worker the figure is the communication beyond the smallest size's.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from trainer.formats.metrics import percentile

COMM_DEFINITION = (
    "backward+optimizer seconds per rank beyond the smallest size's per-sample compute there, "
    "over the step time"
)


@dataclass(frozen=True)
class SizeFigures:
    """What one size measured, steady state (warm-up steps left out)."""

    workers: int
    global_batch: int
    steps_measured: int
    samples_per_s: float
    tokens_per_s: float
    first_step_s: float  # command to first optimizer step (see first_step_seconds)
    step_time_p50_s: float
    step_time_p99_s: float
    data_wait_share: float
    backward_s_per_sample: float  # per rank: backward + optimizer seconds per sample it trained
    peak_memory_mb: list[float]  # per rank
    memory_kind: str  # "gpu" (torch max allocated) or "rss" (peak resident set)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def steady_steps(records: Sequence[dict[str, Any]], warmup: int) -> list[dict[str, Any]]:
    """The "train" records after the first `warmup` steps, one per step, in step order."""
    train = [r for r in records if r.get("event") == "train"]
    return sorted((r for r in train if r["step"] > warmup), key=lambda r: r["step"])


def size_figures(
    records: Sequence[dict[str, Any]],
    workers: int,
    global_batch: int,
    warmup: int,
    first_step_s: float,
) -> SizeFigures:
    """One size's figures from its metrics records.

    Raises:
        ValueError: no step after the warm-up was recorded.
    """
    steps = steady_steps(records, warmup)
    if not steps:
        raise ValueError(f"{workers} workers: no training step after the {warmup} warm-up steps")
    seconds = sum(r["window_s"] for r in steps)
    samples = sum(r["samples_per_s"] * r["window_s"] for r in steps)
    tokens = sum(r["tokens_per_s"] * r["window_s"] for r in steps)
    step_times = [r["step_time_max_s"] for r in steps]
    data_wait = sum(statistics.fmean(r["rank_data_wait_s"]) for r in steps)
    backward = sum(statistics.fmean(r["rank_backward_s"]) for r in steps)
    last = steps[-1]
    gpu = last.get("rank_peak_gpu_mb")
    return SizeFigures(
        workers=workers,
        global_batch=global_batch,
        steps_measured=len(steps),
        samples_per_s=samples / seconds,
        tokens_per_s=tokens / seconds,
        first_step_s=first_step_s,
        step_time_p50_s=percentile(step_times, 50),
        step_time_p99_s=percentile(step_times, 99),
        data_wait_share=data_wait / seconds,
        backward_s_per_sample=backward / (samples / workers),
        peak_memory_mb=list(gpu or last["rank_peak_rss_mb"]),
        memory_kind="gpu" if gpu else "rss",
    )


def first_step_seconds(records: Sequence[dict[str, Any]], launched_at: float) -> float:
    """Seconds from `launched_at` (unix time) to the end of optimizer step 1 (its record's
    `time`, stamped by rank 0 when the step's window closed).

    Raises:
        ValueError: no record of step 1.
    """
    for record in records:
        if record.get("event") == "train" and record.get("step") == 1 and "time" in record:
            return record["time"] - launched_at
    raise ValueError("no record of optimizer step 1")


def throughput_unit(task: str) -> str:
    """What efficiency is computed from: tokens for causal LMs (rows differ in length), samples
    for sequence classification (every row is one prediction, padded to a batch length)."""
    return "tokens" if task == "causal-lm" else "samples"


def scaling_rows(sizes: Sequence[SizeFigures], unit: str) -> list[dict[str, Any]]:
    """Per size: the figures plus throughput in `unit`, per worker, scaling efficiency against
    the smallest size (per-worker throughput over the smallest size's: 1.0 is perfect, for weak
    and strong scaling alike) and the communication share (see the module docstring)."""
    if not sizes:
        return []
    base = sizes[0]
    base_per_worker = _throughput(base, unit) / base.workers
    rows = []
    for size in sizes:
        throughput = _throughput(size, unit)
        per_worker = throughput / size.workers
        rows.append(
            size.to_dict()
            | {
                "throughput_per_s": throughput,
                "throughput_per_worker_per_s": per_worker,
                "efficiency": per_worker / base_per_worker,
                "comm_share": comm_share(size, base),
            }
        )
    return rows


def comm_share(size: SizeFigures, base: SizeFigures) -> float:
    """Share of the step time spent in collectives beyond the smallest size's (0 at that size)."""
    extra_per_sample = max(size.backward_s_per_sample - base.backward_s_per_sample, 0.0)
    samples_per_rank_per_s = size.samples_per_s / size.workers
    return extra_per_sample * samples_per_rank_per_s


def _throughput(size: SizeFigures, unit: str) -> float:
    return size.tokens_per_s if unit == "tokens" else size.samples_per_s
