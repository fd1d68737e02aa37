"""Per-rank window aggregation, step-time percentiles and straggler detection (pure)."""

from __future__ import annotations

import math

import pytest

from trainer.formats.metrics import StragglerDetector, percentile, summarize_window


def window(step: int, busy: list[float], times: list[list[float]]) -> dict:
    return {
        "event": "train",
        "step": step,
        "loss": 0.5,
        "window_s": sum(times[0]),
        "rank_busy_s": busy,
        "rank_step_times_s": times,
    }


def test_percentile_interpolates_between_ranks() -> None:
    assert percentile([1.0, 2.0, 3.0, 4.0, 5.0], 50) == 3.0
    assert percentile([1.0, 2.0], 99) == pytest.approx(1.99)
    assert percentile([7.0], 99) == 7.0
    assert math.isnan(percentile([], 99))


def test_summary_has_mean_max_p99_over_all_ranks_and_drops_raw_lists() -> None:
    times = [[0.1, 0.2, 0.3], [0.1, 0.2, 0.9]]
    out = summarize_window(window(3, [0.1, 0.1], times), StragglerDetector())
    assert out["step_time_mean_s"] == pytest.approx(1.8 / 6)
    assert out["step_time_max_s"] == 0.9
    assert out["step_time_p99_s"] == pytest.approx(percentile([0.1, 0.2, 0.3, 0.1, 0.2, 0.9], 99))
    assert out["rank_step_time_s"] == pytest.approx([0.2, 0.4])
    assert "rank_step_times_s" not in out and out["straggler"] is None


def test_a_rank_consistently_busier_becomes_the_straggler_only_after_three_windows() -> None:
    detector = StragglerDetector()
    times = [[1.0] * 4, [1.0] * 4]
    flags = [
        summarize_window(window(s, [0.5, 2.0], times), detector)["straggler"] for s in (4, 8, 12)
    ]
    assert flags == [None, None, 1]
    # one normal window ends the streak
    assert summarize_window(window(16, [0.5, 0.5], times), detector)["straggler"] is None


def test_noise_and_one_off_hiccups_are_not_stragglers() -> None:
    detector = StragglerDetector()
    times = [[1.0] * 4, [1.0] * 4, [1.0] * 4]
    # 40% slower but only 0.004 s in a 4 s window: noise
    for step in (1, 2, 3, 4):
        record = summarize_window(window(step, [0.010, 0.010, 0.014], times), detector)
        assert record["straggler"] is None
    # slow, fast, slow, fast: never three in a row
    for step, busy in enumerate([[1, 1, 3], [1, 1, 1], [1, 1, 3], [1, 1, 1], [1, 1, 3]]):
        assert summarize_window(window(step, busy, times), detector)["straggler"] is None


def test_other_records_pass_through_unchanged() -> None:
    record = {"event": "eval", "step": 3, "val_loss": 0.1}
    assert summarize_window(record, StragglerDetector()) is record
    old_style = {"event": "train", "step": 1, "loss": 0.3, "samples_per_s": 2.0}
    assert summarize_window(old_style, StragglerDetector()) == old_style


def test_window_record_sums_throughput_and_keeps_each_ranks_numbers() -> None:
    from trainer.loop.window import _FIXED, _window_record

    def row(loss_sum, micro, samples, tokens, elapsed, wait, busy, steps):
        fixed = dict.fromkeys(_FIXED, 0.0) | {
            "loss_sum": loss_sum,
            "micro_steps": micro,
            "samples": samples,
            "tokens": tokens,
            "elapsed": elapsed,
            "data_wait": wait,
            "busy": busy,
            "rss_mb": 100.0,
        }
        return [*fixed.values(), len(steps), *steps, 0.0]  # one unused slot of padding

    record = _window_record(
        [
            row(2.0, 4, 32, 320, 2.0, 0.1, 0.5, [1.0, 1.0]),
            row(6.0, 4, 32, 300, 1.0, 0.3, 0.9, [0.5, 0.5]),
        ]
    )
    assert record["loss"] == 1.0  # (2 + 6) / 8 micro-steps
    assert record["samples_per_s"] == 32.0  # 64 samples over the slowest rank's 2 s
    assert record["tokens_per_s"] == 310.0
    assert record["rank_loss"] == [0.5, 1.5]
    assert record["rank_data_wait_s"] == [0.1, 0.3]
    assert record["rank_step_times_s"] == [[1.0, 1.0], [0.5, 0.5]]
    assert "rank_peak_gpu_mb" not in record
