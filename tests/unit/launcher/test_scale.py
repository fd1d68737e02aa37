"""`ftlaunch scale-test`'s pure parts: worker lists, the batch of each size, the figures from
synthetic metrics records (checked against arithmetic done here, by hand), the table and plot,
and one line per bad option (in-process CLI, nothing started)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from rich.console import Console
from typer.testing import CliRunner

from launcher.cli import app
from launcher.config_loading import load_job_config
from launcher.errors import UserError
from launcher.scale.figures import (
    first_step_seconds,
    scaling_rows,
    size_figures,
    throughput_unit,
)
from launcher.scale.report import scale_document, scale_table, write_plot
from launcher.scale.sizes import SizePlan, parse_mode, parse_workers, plan_size, size_overrides


def _runner() -> CliRunner:
    """stderr apart from stdout: click < 8.2 needs asking (the pyproject floor), later ones
    always separate them and no longer take the argument."""
    try:
        return CliRunner(mix_stderr=False)  # type: ignore[call-arg]
    except TypeError:
        return CliRunner()


def write_job(tmp_path: Path, micro: int = 16, grad_accum: int = 1, workers: int = 2) -> Path:
    job = tmp_path / "job.yaml"
    job.write_text(
        f"model: {{path: {tmp_path / 'model'}}}\n"
        "data: {train: a.jsonl, validation: b.jsonl, test: c.jsonl}\n"
        f"training: {{micro_batch_size: {micro}, grad_accum: {grad_accum}}}\n"
        f"cluster: {{num_workers: {workers}}}\n"
        f"output: {{dir: {tmp_path / 'out'}}}\n"
    )
    return job


def test_worker_lists_parse_and_every_bad_one_names_the_option() -> None:
    assert parse_workers("1,2,4") == [1, 2, 4]
    assert parse_workers(" 2, 8 ") == [2, 8]
    for bad, problem in [
        ("", "comma-separated"),
        ("1,,2", "comma-separated"),
        ("1,two", "whole number"),
        ("0,1", "at least 1"),
        ("-2,1", "at least 1"),
        ("2,1", "strictly increasing"),
        ("1,2,2", "without duplicates"),
    ]:
        with pytest.raises(UserError, match=problem) as caught:
            parse_workers(bad)
        assert str(caught.value).startswith("--workers: ")
    assert parse_mode("strong") == "strong"
    with pytest.raises(UserError, match="--mode: 'fast' is not one of weak, strong"):
        parse_mode("fast")


def test_weak_keeps_each_workers_batch_strong_keeps_the_global_batch(tmp_path: Path) -> None:
    job = load_job_config(write_job(tmp_path, micro=8, grad_accum=2, workers=4))  # global 64
    assert plan_size(job, 1, "weak") == SizePlan(1, 8, 2)
    assert plan_size(job, 8, "weak").global_batch == 128
    assert plan_size(job, 1, "strong") == SizePlan(1, 8, 8)
    assert plan_size(job, 2, "strong") == SizePlan(2, 8, 4)
    assert plan_size(job, 16, "strong") == SizePlan(16, 4, 1)  # micro shrinks: 64 / 16 = 4
    for workers in (1, 2, 4, 16, 32, 64):
        assert plan_size(job, workers, "strong").global_batch == 64
    with pytest.raises(UserError) as caught:
        plan_size(job, 3, "strong")
    message = str(caught.value)
    assert "global batch of 64 samples" in message and "over 3 workers" in message
    assert "micro_batch_size 8 x grad_accum 2 x 4 workers" in message and "21.3333" in message


def test_size_overrides_make_a_valid_job_of_fixed_steps(tmp_path: Path) -> None:
    config = write_job(tmp_path)
    out = tmp_path / "it's: here" / "w4"  # a path YAML would misread unquoted
    job = load_job_config(config, size_overrides(SizePlan(4, 4, 3), 7, str(out)))
    t = job.training
    assert (job.cluster.num_workers, t.micro_batch_size, t.grad_accum) == (4, 4, 3)
    assert (t.max_steps, t.log_every, t.eval_every, t.checkpoint_every) == (7, 1, 7, None)
    assert t.epochs >= 7 and job.output.dir == str(out)


def record(step: int, samples_per_s: float, tokens_per_s: float, window_s: float, **ranks) -> dict:
    return {
        "event": "train",
        "step": step,
        "samples_per_s": samples_per_s,
        "tokens_per_s": tokens_per_s,
        "window_s": window_s,
        "step_time_max_s": window_s,
        "time": 1000.0 + step,
        "rank_data_wait_s": ranks["wait"],
        "rank_backward_s": ranks["backward"],
        "rank_peak_rss_mb": ranks["rss"],
    }


# 1 worker: 16 samples (160 tokens) per step in 0.5 s, 0.2 s of it in backward + step.
ONE = [{"event": "start"}] + [
    record(s, 32.0, 320.0, 0.5, wait=[0.01], backward=[0.2], rss=[500.0 + s]) for s in (1, 2, 3)
]
# 2 workers: 32 samples per step in 0.8 s (each rank 16), 0.5 s of it in backward + step.
TWO = [
    record(1, 10.0, 100.0, 3.2, wait=[1.0, 1.0], backward=[2.0, 2.0], rss=[600.0, 610.0]),
    record(2, 40.0, 400.0, 0.8, wait=[0.02, 0.06], backward=[0.5, 0.5], rss=[600.0, 650.0]),
    record(3, 40.0, 400.0, 0.8, wait=[0.02, 0.06], backward=[0.4, 0.6], rss=[601.0, 652.0]),
]


def test_figures_leave_out_the_warmup_and_compare_against_the_smallest_size() -> None:
    one = size_figures(ONE, 1, 16, warmup=1, first_step_s=first_step_seconds(ONE, 990.0))
    two = size_figures(TWO, 2, 32, warmup=1, first_step_s=first_step_seconds(TWO, 995.0))
    assert one.first_step_s == pytest.approx(11.0) and two.first_step_s == pytest.approx(6.0)
    assert (one.steps_measured, two.steps_measured) == (2, 2)
    assert two.samples_per_s == pytest.approx(40.0) and two.tokens_per_s == pytest.approx(400.0)
    assert two.data_wait_share == pytest.approx(0.04 / 0.8)
    assert two.peak_memory_mb == [601.0, 652.0] and two.memory_kind == "rss"
    assert one.step_time_p50_s == pytest.approx(0.5)
    rows = scaling_rows([one, two], "samples")
    # per worker: 32 samples/s at 1 worker, 20 at 2 -> 62.5%
    assert [r["efficiency"] for r in rows] == pytest.approx([1.0, 20.0 / 32.0])
    assert rows[1]["throughput_per_worker_per_s"] == pytest.approx(20.0)
    # backward per sample: 0.2 / 16 at 1 worker, 0.5 / 16 at 2: 0.3 s of each 0.8 s step extra
    assert rows[0]["comm_share"] == 0.0
    assert rows[1]["comm_share"] == pytest.approx(0.3 / 0.8)
    assert scaling_rows([one, two], "tokens")[1]["throughput_per_s"] == pytest.approx(400.0)


def test_a_size_without_steady_steps_or_a_first_step_is_refused() -> None:
    with pytest.raises(ValueError, match="no training step after the 3 warm-up steps"):
        size_figures(ONE, 1, 16, warmup=3, first_step_s=1.0)
    with pytest.raises(ValueError, match="step 1"):
        first_step_seconds(ONE[2:], 0.0)


def test_gpu_memory_is_reported_when_the_ranks_had_gpus() -> None:
    gpu = [r | {"rank_peak_gpu_mb": [7000.0, 7100.0]} for r in TWO]
    figures = size_figures(gpu, 2, 32, warmup=0, first_step_s=1.0)
    assert figures.peak_memory_mb == [7000.0, 7100.0] and figures.memory_kind == "gpu"
    assert figures.steps_measured == 3


def test_table_json_and_plot_hold_every_size(tmp_path: Path) -> None:
    figures = [size_figures(ONE, 1, 16, 1, 11.0), size_figures(TWO, 2, 32, 1, 6.0)]
    settings = {"config": "job.yaml", "mode": "weak", "steps": 3}
    document = scale_document(scaling_rows(figures, "samples"), "samples", settings)
    assert json.loads(json.dumps(document))["sizes"][1]["workers"] == 2
    console = Console(record=True, width=200)
    console.print(scale_table(document))
    text = console.export_text()
    assert "samples/s/worker" in text and "62.5%" in text and "100.0%" in text
    assert "601/652 (rss)" in text and "503 (rss)" in text
    plot = tmp_path / "scale.png"
    write_plot(document, plot)
    assert plot.read_bytes().startswith(b"\x89PNG")
    assert throughput_unit("causal-lm") == "tokens"
    assert throughput_unit("sequence-classification") == "samples"


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--workers", ""], "--workers: "),
        (["--workers", "0,2"], "--workers: '0,2': every worker count must be at least 1"),
        (["--workers", "2,1"], "--workers: '2,1' must be strictly increasing"),
        (["--workers", "1,1"], "without duplicates"),
        (["--workers", "1,2", "--steps", "0"], "--steps: 0 must be at least 1"),
        (["--workers", "1,2", "--steps", "3", "--warmup", "3"], "--warmup: 3 must be"),
        (["--workers", "1,2", "--mode", "linear"], "--mode: 'linear' is not one of"),
        (["--workers", "3", "--mode", "strong"], "cannot be split over 3 workers"),
    ],
)
def test_bad_options_exit_2_with_one_line_and_write_nothing(
    tmp_path: Path, args: list[str], fragment: str
) -> None:
    job = write_job(tmp_path)
    result = _runner().invoke(app, ["scale-test", str(job), *args])
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 2, result.output
    assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], lines
    assert sorted(p.name for p in tmp_path.iterdir()) == ["job.yaml"]


def test_an_existing_test_directory_is_never_written_over(tmp_path: Path) -> None:
    job = write_job(tmp_path)
    earlier = tmp_path / "earlier"
    earlier.mkdir()
    (earlier / "scale.json").write_text("{}")
    result = _runner().invoke(
        app, ["scale-test", str(job), "--workers", "1", "--out", str(earlier)]
    )
    assert result.exit_code == 2
    assert f"--out: {earlier} exists" in result.stderr
    assert (earlier / "scale.json").read_text() == "{}"
