"""The head's stall verdicts from heartbeats (pure: beats and times in, a named stall out), and
the worker side's step clock."""

from __future__ import annotations

from typing import Any

from cluster.head.watchdog import STALL_FLOOR_S, Watchdog
from cluster.worker.heartbeat import StepClock


def beat(rank: int, seq: int, phase: str, step: int, in_phase_s: float, **extra: Any) -> dict:
    record = {"rank": rank, "pid": 100 + rank, "seq": seq, "phase": phase, "step": step}
    return record | {"in_phase_s": in_phase_s, "host": "h", "process": "S"} | extra


def test_a_rank_whose_beats_stop_is_named_silent_after_the_heartbeat_timeout() -> None:
    dog = Watchdog(heartbeat_timeout_s=10, stall_timeout_s=60)
    for t in range(5):  # both beat; then rank 1 stops (SIGSTOP): its seq no longer moves
        dog.observe([beat(0, t, "forward", 3, 0.1), beat(1, t, "forward", 3, 0.1)], now=t)
    for t in range(5, 15):
        dog.observe(
            [beat(0, t, "backward", 3, t - 5), beat(1, 4, "forward", 3, 0.1, process="T")], now=t
        )
        assert dog.check(now=t) is None  # 10 s of silence not reached yet
    stall = dog.check(now=14.5)
    assert stall is not None and stall.reason == "silent"
    assert [r.rank for r in stall.ranks] == [1] and stall.for_s == 10.5
    line = stall.line("/out/stacks/attempt-1")
    assert line.startswith("rank 1 (h, pid 101) stalled: sent no heartbeat for 10 s")
    assert "in phase forward of step 3" in line and line.endswith("in /out/stacks/attempt-1")


def test_a_silent_rank_whose_process_is_gone_died_and_is_not_a_stall() -> None:
    dog = Watchdog(heartbeat_timeout_s=10)
    dog.observe([beat(0, 1, "forward", 1, 0), beat(1, 1, "forward", 1, 0)], now=0)
    dog.observe([beat(0, 2, "forward", 1, 0), beat(1, 1, "forward", 1, 0, process="gone")], now=1)
    assert dog.check(now=30) is not None and dog.check(now=30).ranks[0].rank == 0  # type: ignore[union-attr]
    dog.observe([beat(0, 3, "done", 9, 0)], now=31)  # a finished rank is never judged
    assert dog.check(now=100) is None


def test_a_stuck_rank_that_keeps_beating_is_named_not_the_ranks_waiting_for_it() -> None:
    dog = Watchdog(heartbeat_timeout_s=10, stall_timeout_s=20)
    for t in range(40):  # rank 1 sleeps in forward of step 7; ranks 0 and 2 wait in backward
        dog.observe(
            [
                beat(0, t, "backward", 7, t + 0.3),
                beat(1, t, "forward", 7, t + 0.31),
                beat(2, t, "backward", 7, t + 0.29),
            ],
            now=t,
        )
        stall = dog.check(now=t)
        if t < 20:
            assert stall is None
        else:
            break
    assert stall is not None and stall.reason == "stuck" and t == 20
    assert [r.rank for r in stall.ranks] == [1]
    assert "stuck in phase forward of step 7 for 20 s (stall timeout 20 s)" in stall.line("d")


def test_a_rank_stuck_in_save_is_behind_ranks_waiting_in_the_next_collective() -> None:
    dog = Watchdog(heartbeat_timeout_s=10, stall_timeout_s=30)
    dog.observe([beat(0, 1, "save", 16, 31.0), beat(1, 1, "collective", 16, 30.5)], now=0)
    stall = dog.check(now=0)
    assert stall is not None and [r.rank for r in stall.ranks] == [0]


def test_a_collective_every_rank_entered_and_none_left_names_them_all() -> None:
    dog = Watchdog(heartbeat_timeout_s=10, stall_timeout_s=30)
    dog.observe([beat(0, 1, "collective", 5, 40.0), beat(1, 1, "collective", 5, 39.6)], now=0)
    stall = dog.check(now=0)
    assert stall is not None and [r.rank for r in stall.ranks] == [0, 1]
    assert stall.line("d").startswith("rank 0 (h, pid 100), rank 1 (h, pid 101) stalled")


def test_the_default_stall_timeout_is_ten_median_steps_with_a_floor() -> None:
    dog = Watchdog(heartbeat_timeout_s=60)
    assert dog.stall_limit_s() == STALL_FLOOR_S  # no step measured yet
    dog.observe([beat(0, 1, "forward", 2, 0, step_time_s=50.0)], now=0)
    dog.observe([beat(1, 1, "forward", 2, 0, step_time_s=70.0)], now=0)
    assert dog.stall_limit_s() == 600.0  # 10 x median(50, 70)
    dog.observe([beat(0, 2, "forward", 2, 301.0)], now=1)
    assert dog.check(now=1) is None  # 301 s in forward is under 600 s
    assert Watchdog(heartbeat_timeout_s=60, stall_timeout_s=90).stall_limit_s() == 90


def test_a_retired_group_is_not_judged_again_but_its_restart_is() -> None:
    dog = Watchdog(heartbeat_timeout_s=5)
    dog.observe([beat(0, 1, "forward", 1, 0)], now=0)
    assert dog.check(now=10) is not None
    dog.retire()  # the stall was acted on: rank 0 (pid 100) is being killed
    dog.observe([beat(0, 1, "forward", 1, 0)], now=11)
    assert dog.check(now=30) is None
    dog.observe([beat(0, 1, "setup", 0, 0, pid=200)], now=31)  # the restarted rank 0
    assert dog.check(now=33) is None
    stall = dog.check(now=40)
    assert stall is not None and stall.ranks[0].pid == 200


def test_the_step_clock_measures_steps_between_sparse_samples() -> None:
    clock = StepClock()
    assert clock.median_s() is None
    for step, entered in [(1, 0.0), (16, 1.5), (16, 1.5), (31, 3.0), (46, 4.5)]:
        clock.observe(step, entered)
    assert clock.median_s() == 0.1
