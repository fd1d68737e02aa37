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
        where = f"rank {self.rank}" if self.rank is not None else "the training controller"
        return f"training failed on {where}: {self.message}"


@dataclass
class Preempted(Exception):
    """SIGTERM arrived; `committed` is the checkpoint saved for it (None if the grace ran out)."""

    committed: str | None
