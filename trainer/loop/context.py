"""One rank's view of the running job, handed to every part of the loop."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from trainer.config.spec import RunSpec
from trainer.engines.base import Engine
from trainer.loop.saves import BackgroundSaves
from trainer.protocols import WorkerIO


@dataclass(frozen=True)
class Run:
    """The spec, where results go (`io`), the engine, and which rank this is."""

    spec: RunSpec
    io: WorkerIO
    engine: Engine
    world: int
    rank: int
    saves: BackgroundSaves | None = None  # checkpoint saves off the critical path

    @property
    def is_rank_zero(self) -> bool:
        return self.rank == 0

    def enter(self, phase: str, step: int) -> None:
        """Publish what this rank does now (one of trainer.protocols.PHASES) for its heartbeat."""
        if self.io.phases is not None:
            self.io.phases.enter(phase, step)

    def report(self, record: dict[str, Any]) -> None:
        """Rank 0 reports; the others stay silent (every rank computed the same record)."""
        if self.is_rank_zero:
            self.io.reporter.report(record)
