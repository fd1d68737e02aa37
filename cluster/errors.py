"""How a run on a cluster can end other than with a summary. No Ray import, so the job commands
(`ftlaunch status/logs/list`) can catch these without loading Ray."""

from __future__ import annotations

from dataclasses import dataclass


class ClusterError(Exception):
    """The cluster cannot be reached or cannot run the request; message names what is wrong."""


@dataclass
class TrainingFailed(Exception):
    rank: int | None
    message: str
    # A worker refused corrupted input data or a config this model/machine cannot run: bad
    # input (exit 2), not a crash.
    is_data_error: bool = False

    def __str__(self) -> str:
        if self.rank is None:  # the head's own verdict (a stall, a failed commit) says where
            return f"training failed: {self.message}"
        return f"training failed on rank {self.rank}: {self.message}"


@dataclass
class Preempted(Exception):
    """SIGTERM (or a Ctrl-C) arrived; `committed` is the checkpoint saved for it (None if the
    grace ran out)."""

    committed: str | None
    signal_name: str = "SIGTERM"
