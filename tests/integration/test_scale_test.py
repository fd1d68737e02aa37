"""`ftlaunch scale-test` for real: the tiny BERT at 1 and 2 workers on one embedded Ray, the
real CLI. One run, checked several ways: the JSON on stdout, scale.json, the table, the plot and
each size's own run directory."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.fixtures import ftlaunch

pytestmark = [pytest.mark.ray, pytest.mark.dist]
STEPS = 4


@pytest.fixture(scope="module")
def scale_run(
    tmp_path_factory: pytest.TempPathFactory, tiny_bert: Path, keyword_data: dict[str, Path]
) -> tuple[dict, str, Path, Path]:
    tmp = tmp_path_factory.mktemp("scale")
    job = tmp / "job.yaml"
    job.write_text(
        f"model: {{path: {tiny_bert}}}\n"
        f"data: {{train: {keyword_data['train']}, validation: {keyword_data['validation']}, "
        f"test: {keyword_data['test']}, max_length: 32, cache_dir: {tmp / 'cache'}}}\n"
        "training: {micro_batch_size: 16}\n"
        f"output: {{dir: {tmp / 'out'}}}\n"
    )
    out, plot = tmp / "scale", tmp / "scale.png"
    result = ftlaunch("scale-test", str(job), "--workers", "1,2", "--steps", str(STEPS),
                      "--out", str(out), "--plot", str(plot), "--json", timeout=540)  # fmt: skip
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads(result.stdout), result.stderr, out, plot


@pytest.mark.timeout(600)
def test_both_sizes_are_measured_with_positive_figures(scale_run: tuple) -> None:
    document, _, out, _ = scale_run
    assert json.loads((out / "scale.json").read_text()) == document
    sizes = document["sizes"]
    assert [s["workers"] for s in sizes] == [1, 2] and document["unit"] == "samples"
    assert [s["global_batch"] for s in sizes] == [16, 32]  # weak scaling: 16 per worker
    for size in sizes:
        assert size["steps_measured"] == STEPS - 1  # the first step is the warm-up
        assert size["throughput_per_s"] > 0 and size["tokens_per_s"] > 0
        assert 0 < size["step_time_p50_s"] <= size["step_time_p99_s"]
        assert size["first_step_s"] > 0
        assert 0 <= size["data_wait_share"] < 1 and 0 <= size["comm_share"] < 1
        assert len(size["peak_memory_mb"]) == size["workers"]
        assert all(mb > 100 for mb in size["peak_memory_mb"]) and size["memory_kind"] == "rss"
    one, two = sizes
    per_worker = [s["throughput_per_s"] / s["workers"] for s in sizes]
    assert one["efficiency"] == 1.0 and one["comm_share"] == 0.0
    assert two["efficiency"] == pytest.approx(per_worker[1] / per_worker[0])
    assert document["model"]["trainable_params"] > 0


@pytest.mark.timeout(600)
def test_each_size_ran_as_its_own_run_and_the_table_and_plot_show_both(scale_run: tuple) -> None:
    document, stderr, out, plot = scale_run
    for workers in (1, 2):
        run_dir = out / f"w{workers}"
        summary = json.loads((run_dir / "summary.json").read_text())
        records = [
            json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()
        ]
        start = next(r for r in records if r["event"] == "start")
        assert start["world_size"] == workers and summary["steps"] == STEPS
        assert all("rank_backward_s" in r for r in records if r["event"] == "train")
    assert "scale-test (weak scaling, 4 steps)" in stderr
    efficiency = f"{document['sizes'][1]['efficiency']:.1%}"
    assert efficiency in stderr
    assert plot.read_bytes().startswith(b"\x89PNG")
