"""Decide, from the ranks' heartbeats, whether a rank has stalled and which one (pure: the
collector feeds it beats and the time, and acts on its answer).

Two ways to stall:
- silent: a rank's heartbeats stop (its process is stopped or wedged) for heartbeat_timeout_s
  while its process is still there (a process that is gone died: Ray Train restarts it);
- stuck: a rank stays in one phase longer than the stall timeout while it keeps beating (its
  training thread waits on something that never comes: a collective another rank never joins, a
  hung read). Default timeout: 10x the median step time, at least STALL_FLOOR_S.

When ranks are stuck, the others usually wait for one of them inside a collective, so all of
them look stuck. The one to name is the rank furthest behind in the cadence of a step: the
lowest (step, phase) in trainer.protocols.PHASES order; of those, the ones that entered their
phase first (within TIE_S). A collective that every rank entered and none left names them all.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Any

from trainer.protocols import PHASES

STALL_FLOOR_S = 300.0
STEP_MULTIPLE = 10.0
TIE_S = 1.0
JUDGED_PHASES = frozenset(PHASES) - {"setup", "done"}


@dataclass
class RankState:
    rank: int
    pid: int
    host: str
    node_id: str
    fresh_at: float  # head clock: when this rank's beat last changed (or it registered)
    seq: int = 0
    phase: str = "setup"
    step: int = 0
    phase_since: float = 0.0  # head clock estimate of when it entered `phase`
    step_time_s: float | None = None
    gone: bool = False

    def lag_key(self) -> tuple[int, int]:
        return (self.step, PHASES.index(self.phase) if self.phase in PHASES else 0)

    def describe(self) -> str:
        return f"rank {self.rank} ({self.host}, pid {self.pid})"


@dataclass(frozen=True)
class Stall:
    ranks: list[RankState]
    reason: str  # "silent" or "stuck"
    for_s: float
    limit_s: float

    def line(self, stacks_dir: str) -> str:
        """The one line the launcher prints: who, where, for how long, and where the stacks are."""
        who = ", ".join(r.describe() for r in self.ranks)
        first = self.ranks[0]
        where = f"in phase {first.phase} of step {first.step}"
        if self.reason == "silent":
            what = f"sent no heartbeat for {self.for_s:.0f} s (heartbeat_timeout_s {self.limit_s:g}) {where}"
        else:
            what = f"stuck {where} for {self.for_s:.0f} s (stall timeout {self.limit_s:.0f} s)"
        return f"{who} stalled: {what}; stacks of every rank in {stacks_dir}"

    def record(self) -> dict[str, Any]:
        first = self.ranks[0]
        return {
            "event": "stalled",
            "ranks": [r.rank for r in self.ranks],
            "hosts": [r.host for r in self.ranks],
            "pids": [r.pid for r in self.ranks],
            "reason": self.reason,
            "phase": first.phase,
            "step": first.step,
            "for_s": round(self.for_s, 1),
            "limit_s": self.limit_s,
        }


@dataclass
class Watchdog:
    heartbeat_timeout_s: float
    stall_timeout_s: float | None = None
    ranks: dict[int, RankState] = field(default_factory=dict)
    retired: set[int] = field(default_factory=set)  # pids of a group already judged stalled

    def live_ranks(self) -> list[RankState]:
        return sorted(
            (r for r in self.ranks.values() if not r.gone and r.phase != "done"),
            key=lambda r: r.rank,
        )

    def retire(self) -> None:
        """A stall was acted on: its group is going down; judge only the next one."""
        self.retired |= {r.pid for r in self.ranks.values()}
        self.ranks.clear()

    def observe(self, beats: list[dict[str, Any]], now: float) -> None:
        """Beats batched by a node agent. A rank is known from its first beat; a beat from a new
        process for a rank (a restarted group) starts judging that process afresh."""
        for beat in beats:
            if beat["pid"] in self.retired:
                continue
            state = self.ranks.get(beat["rank"])
            if state is None or state.pid != beat["pid"]:
                if beat.get("process") == "gone":
                    continue
                host, node = beat.get("host", "?"), beat.get("node_id", "?")
                state = RankState(beat["rank"], beat["pid"], host, node, fresh_at=now, seq=-1)
                self.ranks[beat["rank"]] = state
            state.gone = beat.get("process") == "gone"
            if beat["seq"] != state.seq:
                state.seq, state.fresh_at = beat["seq"], now
                state.phase, state.step = beat["phase"], beat["step"]
                state.phase_since = now - beat["in_phase_s"]
                state.step_time_s = beat.get("step_time_s") or state.step_time_s

    def stall_limit_s(self) -> float:
        """The stall timeout in force: the configured one, else 10x the median step time."""
        if self.stall_timeout_s is not None:
            return self.stall_timeout_s
        steps = [r.step_time_s for r in self.ranks.values() if r.step_time_s]
        median = statistics.median(steps) if steps else 0.0
        return max(STALL_FLOOR_S, STEP_MULTIPLE * median)

    def check(self, now: float) -> Stall | None:
        """The stall to act on now, if any (silence first: it is the stronger evidence)."""
        live = self.live_ranks()
        silent = [r for r in live if now - r.fresh_at > self.heartbeat_timeout_s]
        if silent:
            longest = max(now - r.fresh_at for r in silent)
            return Stall(
                sorted(silent, key=lambda r: r.rank), "silent", longest, self.heartbeat_timeout_s
            )
        limit = self.stall_limit_s()
        stuck = [r for r in live if r.phase in JUDGED_PHASES and now - r.phase_since > limit]
        if not stuck:
            return None
        named = laggards(live)
        return Stall(named, "stuck", max(now - r.phase_since for r in named), limit)


def laggards(ranks: list[RankState]) -> list[RankState]:
    """The ranks the others wait for: furthest behind in (step, phase), earliest in that phase."""
    behind = min(r.lag_key() for r in ranks)
    candidates = [r for r in ranks if r.lag_key() == behind]
    earliest = min(r.phase_since for r in candidates)
    return sorted(
        (r for r in candidates if r.phase_since - earliest <= TIE_S), key=lambda r: r.rank
    )
