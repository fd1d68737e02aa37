"""`ftlaunch scale-test`: the same job at several worker counts on one cluster, side by side.

Every size is a full `ftlaunch run` (the same validation, data, placement, workers and head
services) with its own output.dir under the test's directory, run on one cluster started (or
reached) once: the embedded Ray is sized for the largest size and started before the first run,
so each size pays only for its own launch. The figures come from each run's metrics.jsonl
(launcher/scale/figures.py); this module is the shell around them.
"""

from __future__ import annotations

import importlib.util
import json
import os
import time
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Any

from rich.console import Console

from cluster.auth.mode import check_closed
from launcher.commands.run import RunRequest, run_from_file
from launcher.config_loading import load_job_config
from launcher.errors import UserError
from launcher.scale.figures import (
    first_step_seconds,
    scaling_rows,
    size_figures,
    throughput_unit,
)
from launcher.scale.report import SCALE_FILE, scale_document, write_plot
from launcher.scale.sizes import Mode, SizePlan, plan_size, size_overrides
from trainer.config import JobConfig
from trainer.formats.rundir import METRICS_FILE


@dataclass(frozen=True)
class ScaleRequest:
    """What `ftlaunch scale-test` was asked."""

    config: Path
    workers: list[int]
    steps: int = 20
    warmup: int = 1
    mode: Mode = "weak"
    out: Path | None = None  # the test's directory; default beside output.dir, time-stamped
    plot: Path | None = None
    overrides: list[str] = field(default_factory=list)
    address: str | None = None
    insecure: bool = False
    force: bool = False


def scale_test(request: ScaleRequest, console: Console, started: float) -> dict[str, Any]:
    """Run every size, write `scale.json` (and the plot); returns the document. `started`: unix
    time of the command, the origin of the first step's time.

    Raises:
        UserError: bad options, a size whose job is invalid (exit 2), before anything runs.
        cluster.errors.ClusterError: unreachable cluster, a size that cannot be placed.
        cluster.errors.TrainingFailed: a size's run failed.
    """
    job = load_job_config(request.config, request.overrides)
    check_closed(version("ray"), os.environ, request.insecure)
    _check_options(request)
    sizes = [plan_size(job, workers, request.mode) for workers in request.workers]
    out = _test_dir(request, job)
    overrides = {size.workers: _size_overrides(request, size, out) for size in sizes}
    largest = load_job_config(request.config, overrides[sizes[-1].workers])  # fails before a start
    for size in sizes[:-1]:
        load_job_config(request.config, overrides[size.workers])
    out.mkdir(parents=True)
    figures = _run_sizes(request, largest, sizes, overrides, out, console, started)
    unit = throughput_unit(job.model.task)
    settings = {
        "config": str(request.config),
        "mode": request.mode,
        "steps": request.steps,
        "warmup_steps": request.warmup,
        "overrides": request.overrides,
        "directory": str(out),
        "model": _model_facts(_read_records(out / sizes[0].label() / METRICS_FILE)),
    }
    document = scale_document(scaling_rows(figures, unit), unit, settings)
    (out / SCALE_FILE).write_text(json.dumps(document, indent=2) + "\n")
    if request.plot is not None:
        write_plot(document, request.plot)
    return document


def _check_options(request: ScaleRequest) -> None:
    if request.steps < 1:
        raise UserError(f"--steps: {request.steps} must be at least 1")
    if not 0 <= request.warmup < request.steps:
        raise UserError(
            f"--warmup: {request.warmup} must be at least 0 and below --steps ({request.steps}): "
            "the steps after the warm-up are the ones measured"
        )
    if request.plot is not None:
        if importlib.util.find_spec("matplotlib") is None:
            raise UserError("--plot: needs matplotlib (pip install matplotlib)")
        if not request.plot.parent.is_dir():
            raise UserError(f"--plot: {request.plot.parent} is not a directory")


def _test_dir(request: ScaleRequest, job: JobConfig) -> Path:
    """The test's own directory, which must not exist yet: a scale test never writes over
    earlier results."""
    if request.out is not None:
        out = request.out.expanduser().resolve()
        option = "--out"
    else:
        output_dir = Path(job.output.dir).expanduser().resolve()
        stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
        out = output_dir.parent / f"{output_dir.name}-scale-{stamp}"
        option = "output.dir"
    if out.exists():
        raise UserError(f"{option}: {out} exists; scale-test writes only into a new directory")
    return out


def _size_overrides(request: ScaleRequest, size: SizePlan, out: Path) -> list[str]:
    return [*request.overrides, *size_overrides(size, request.steps, str(out / size.label()))]


def _run_sizes(
    request: ScaleRequest,
    largest: JobConfig,
    sizes: list[SizePlan],
    overrides: dict[int, list[str]],
    out: Path,
    console: Console,
    started: float,
) -> list[Any]:
    """Start (or reach) the cluster once, sized for the largest size, and run every size on it."""
    from cluster.registry import backend_for

    cluster = largest.cluster
    if request.address:
        cluster = cluster.model_copy(update={"address": request.address})
    figures = []
    with backend_for(cluster, token_dir=out, insecure=request.insecure) as backend:
        cluster_start_s = time.time() - started
        backend.check_placement()  # the largest size must fit before the smallest one runs
        for size in sizes:
            console.rule(f"{size.workers} workers, global batch {size.global_batch}")
            launched = time.time()
            run = RunRequest(
                config=request.config,
                overrides=overrides[size.workers],
                address=request.address,
                insecure=request.insecure,
                force=request.force,
            )
            run_from_file(run, console, backend)
            records = _read_records(out / size.label() / METRICS_FILE)
            first_step = cluster_start_s + first_step_seconds(records, launched)
            figures.append(
                size_figures(records, size.workers, size.global_batch, request.warmup, first_step)
            )
    return figures


def _model_facts(records: list[dict[str, Any]]) -> dict[str, Any]:
    """What the scaling model (benchmarks/scaling_model.py) needs to know of the model trained."""
    start = next((r for r in records if r.get("event") == "start"), {})
    keys = ("total_params", "trainable_params", "zero_stage", "precision", "engine")
    return {key: start.get(key) for key in keys}


def _read_records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
