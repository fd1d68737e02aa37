"""What each rank measured since the last log line, gathered to rank 0 in one collective.

Every rank keeps its own loss, samples, tokens, per-step wall times, data wait, busy time
(data wait + forward: the work before the gradient all-reduce, where stragglers show), the time
in backward and the optimizer step (where the gradient collectives run: `ftlaunch scale-test`
compares it across world sizes to estimate communication) and peak memory. `flush()` all-gathers one fixed-size vector per rank (cheap: once per `log_every` steps)
and returns a record with the aggregates a reader needs plus the per-rank lists the head uses
to compute step-time percentiles and spot stragglers (trainer/formats/metrics.py).
"""

from __future__ import annotations

import resource
import time
from typing import Any

import torch
import torch.distributed as dist

from trainer.data.split import Batch

# Fixed slots before the step times in the gathered vector.
_FIXED = (
    "loss_sum",
    "micro_steps",
    "samples",
    "tokens",
    "elapsed",
    "data_wait",
    "busy",
    "backward",
    "rss_mb",
    "gpu_mb",
)


def peak_rss_mb() -> float:
    """This process's peak resident memory (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def peak_gpu_mb() -> float:
    return torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else 0.0


def gather_peak_memory() -> dict[str, Any]:
    """Collective: each rank's peak so far, in the unit `ftlaunch plan` predicts: GPU memory
    allocated by torch on GPU workers, the process's peak resident memory on CPU workers."""
    on_gpu = torch.cuda.is_available()
    local = torch.cuda.max_memory_allocated() if on_gpu else peak_rss_mb() * 2**20
    mine = torch.tensor([float(local)], dtype=torch.float64)
    gathered = [torch.empty_like(mine) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, mine)
    ranks = [int(t.item()) for t in gathered]
    device = "gpu" if on_gpu else "cpu"
    return {"device": device, "measured_peak_bytes": max(ranks), "rank_peak_bytes": ranks}


class RankWindow:
    def __init__(self, max_steps_per_window: int) -> None:
        self.capacity = max_steps_per_window
        self.reset()

    def reset(self) -> None:
        self.loss_sum, self.micro_steps, self.samples, self.tokens = 0.0, 0, 0, 0
        self.data_wait_s = self.busy_s = self.backward_s = 0.0
        self.step_times: list[float] = []
        self.started = self._step_started = time.perf_counter()

    def add_micro(
        self, loss: float, batch: Batch, data_wait_s: float, forward_s: float, backward_s: float
    ) -> None:
        """One micro-batch: its loss, its data wait, and the seconds of its forward pass and of
        its backward pass with the optimizer step (the collectives run in the latter)."""
        self.loss_sum += loss
        self.micro_steps += 1
        self.samples += batch.num_samples()
        self.tokens += batch.num_tokens()
        self.data_wait_s += data_wait_s
        self.busy_s += data_wait_s + forward_s
        self.backward_s += backward_s

    def end_step(self) -> None:
        """An optimizer step finished: record its wall time (data wait included)."""
        now = time.perf_counter()
        self.step_times.append(now - self._step_started)
        self._step_started = now

    def exclude_pause(self, since: float) -> None:
        """Evaluation or checkpointing ran since `since` (perf_counter): keep it out of step
        times and throughput (it is reported separately)."""
        now = time.perf_counter()
        self.started += now - max(since, self.started)  # only the part inside this window
        self._step_started = now

    def flush(self) -> dict[str, Any]:
        """Collective: every rank calls it at the same step; all get the same record back."""
        elapsed = max(time.perf_counter() - self.started, 1e-9)
        steps = self.step_times[-self.capacity :]
        local = [self.loss_sum, self.micro_steps, self.samples, self.tokens, elapsed]
        local += [self.data_wait_s, self.busy_s, self.backward_s, peak_rss_mb(), peak_gpu_mb()]
        local.append(len(steps))
        vector = torch.zeros(len(_FIXED) + 1 + self.capacity, dtype=torch.float64)
        vector[: len(local)] = torch.tensor(local, dtype=torch.float64)
        vector[len(local) : len(local) + len(steps)] = torch.tensor(steps, dtype=torch.float64)
        gathered = [torch.empty_like(vector) for _ in range(dist.get_world_size())]
        dist.all_gather(gathered, vector)
        self.reset()
        return _window_record([row.tolist() for row in gathered])


def _window_record(rows: list[list[float]]) -> dict[str, Any]:
    fields = [dict(zip(_FIXED, row, strict=False)) for row in rows]
    window_s = max(f["elapsed"] for f in fields)
    micro_steps = sum(f["micro_steps"] for f in fields)
    n_fixed = len(_FIXED)
    gpu = [round(f["gpu_mb"], 1) for f in fields]
    return (
        {
            "loss": sum(f["loss_sum"] for f in fields) / max(micro_steps, 1),
            "samples_per_s": sum(f["samples"] for f in fields) / window_s,
            "tokens_per_s": sum(f["tokens"] for f in fields) / window_s,
            "window_s": window_s,
            "rank_loss": [f["loss_sum"] / max(f["micro_steps"], 1) for f in fields],
            "rank_data_wait_s": [f["data_wait"] for f in fields],
            "rank_busy_s": [f["busy"] for f in fields],
            "rank_backward_s": [f["backward"] for f in fields],
            "time": time.time(),  # when the window ended (rank 0's clock): time to first step
            "rank_peak_rss_mb": [round(f["rss_mb"], 1) for f in fields],
            "rank_step_times_s": [
                row[n_fixed + 1 : n_fixed + 1 + int(row[n_fixed])] for row in rows
            ],
        }
        | ({"rank_peak_gpu_mb": gpu} if any(gpu) else {})
    )
