"""Turn one log window's per-rank measurements into the run's metrics stream (pure, torch-free).

Rank 0 gathers every rank's window (loss, step times, data wait, busy time, memory) and reports it
as one record; the head calls `summarize_window` on it, so the stream carries both the aggregate a
human reads (loss mean, step time mean/max/p99, summed throughput) and who is slow.

Why "busy" time decides stragglers, not step time: in synchronous data parallelism every rank
waits for the slowest one inside the gradient all-reduce, so all ranks see the same step time.
What differs is the work a rank does before it reaches the collective (reading its batch and
running the forward pass); a rank that is consistently slower there holds everybody back.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from typing import Any

# A rank is "slow" in a window when its busy time exceeds the other ranks' median by this factor
# and by at least this share of the window (tiny absolute differences are noise, not stragglers).
STRAGGLER_FACTOR = 1.25
STRAGGLER_MIN_SHARE = 0.02
# ... and a straggler when it was slow in this many consecutive windows.
STRAGGLER_WINDOWS = 3

RAW_FIELDS = ("rank_step_times_s",)


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0-100) with linear interpolation between the nearest ranks."""
    if not values:
        return math.nan
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low, high = math.floor(position), math.ceil(position)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


@dataclass
class StragglerDetector:
    """Remembers, per rank, for how many consecutive windows it was slow."""

    factor: float = STRAGGLER_FACTOR
    min_share: float = STRAGGLER_MIN_SHARE
    windows: int = STRAGGLER_WINDOWS
    slow_streak: dict[int, int] = field(default_factory=dict)

    def update(self, busy_s: list[float], window_s: float) -> int | None:
        """Feed one window's per-rank busy seconds; returns the straggler rank, if there is one."""
        if len(busy_s) < 2:
            return None
        for rank, busy in enumerate(busy_s):
            others = statistics.median(b for r, b in enumerate(busy_s) if r != rank)
            is_slow = busy > others * self.factor and busy - others > self.min_share * window_s
            self.slow_streak[rank] = self.slow_streak.get(rank, 0) + 1 if is_slow else 0
        streaks = [(streak, rank) for rank, streak in self.slow_streak.items()]
        longest, rank = max(streaks)
        return rank if longest >= self.windows else None

    def reset(self) -> None:
        self.slow_streak.clear()


def summarize_window(record: dict[str, Any], detector: StragglerDetector) -> dict[str, Any]:
    """The record to store for a gathered "train" window: aggregates added, raw lists dropped.

    Records without per-rank step times (other events, older runs) pass through unchanged.
    """
    per_rank = record.get("rank_step_times_s")
    if record.get("event") != "train" or not per_rank:
        return record
    all_steps = [t for rank_times in per_rank for t in rank_times]
    busy = record.get("rank_busy_s") or []
    summary = {k: v for k, v in record.items() if k not in RAW_FIELDS}
    summary |= {
        "step_time_mean_s": statistics.fmean(all_steps),
        "step_time_max_s": max(all_steps),
        "step_time_p99_s": percentile(all_steps, 99),
        "rank_step_time_s": [statistics.fmean(times) for times in per_rank],
        "straggler": detector.update(busy, record.get("window_s", sum(per_rank[0]))),
    }
    return summary
