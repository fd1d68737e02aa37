"""`ftlaunch plan`, and the same plan checked by `ftlaunch run` before anything starts."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from launcher.config_loading import load_job_config
from launcher.errors import UserError
from launcher.models import resolve_model_path
from launcher.plan.architecture import read_architecture
from launcher.plan.report import DEFAULT_MFU, Plan, format_size, make_plan, render
from launcher.plan.target import (
    NodeMemory,
    cluster_nodes,
    layout_for,
    resolve_target,
    this_machine,
)
from trainer.config import JobConfig

# The label count is not known before the data is read; a head over a few labels is a rounding
# error next to the model.
PLANNED_LABELS = 2


@dataclass(frozen=True)
class PlanOptions:
    gpu_memory: int | None = None  # bytes per GPU
    cpu_memory: int | None = None  # bytes per node
    mfu: float = DEFAULT_MFU
    peak_tflops: float | None = None


def plan_job(job: JobConfig, model_dir: Path, options: PlanOptions = PlanOptions()) -> Plan:
    """The plan of `job` against the memory its ranks will have (see launcher/plan/target.py).

    Raises:
        UserError: the model's size cannot be derived.
        cluster.errors.ClusterError: cluster.address is set but cannot be reached.
    """
    arch = read_architecture(model_dir, job.model.task, PLANNED_LABELS)
    nodes, source = _nodes(job, options)
    layout = layout_for(job, nodes)
    target = resolve_target(layout, nodes, source, options.gpu_memory, options.cpu_memory)
    return make_plan(job, arch, layout, target, options.mfu, options.peak_tflops)


def _nodes(job: JobConfig, options: PlanOptions) -> tuple[list[NodeMemory], str]:
    given = options.gpu_memory if job.cluster.uses_gpu() else options.cpu_memory
    if given is not None:
        return [], "given"
    if job.cluster.address:
        return cluster_nodes(job.cluster.address), f"cluster {job.cluster.address}"
    return this_machine(), "this machine, where the embedded cluster runs"


def run_plan(
    config: Path,
    overrides: list[str],
    options: PlanOptions,
    as_json: bool,
    echo: Callable[[str], None],
) -> None:
    """Print the plan of a job file.

    Raises:
        UserError: bad config or model (exit 2).
    """
    job = load_job_config(config, overrides)
    model_dir = resolve_model_path(job.model.path, need_tokenizer=False)
    plan = plan_job(job, model_dir, options)
    if as_json:
        echo(json.dumps(plan.as_json(), indent=2))
        return
    for line in render(plan):
        echo(line)


def check_fits(
    job: JobConfig, model_dir: Path, echo: Callable[[str], None], refuse: bool = True
) -> Plan | None:
    """`ftlaunch run`'s check, before data is prepared or any worker starts: refuse a job whose
    ranks cannot hold it (unless not `refuse`: --force); report an unknown target, or a model
    the planner cannot size, and let it through.

    Raises:
        UserError: one line naming the dominant component and the suggested change.
    """
    try:
        plan = plan_job(job, model_dir)
    except UserError as exc:  # e.g. an architecture without formula and without safetensors
        echo(f"plan: skipped ({exc})")
        return None
    v = plan.verdict
    peak = _size(plan.rank.peak_bytes)
    if v.fits is False:
        message = (
            f"plan: needs {peak} per rank but {_size(v.usable_bytes or 0)} is usable "
            f"({plan.target.source}); dominant: {v.dominant}; {v.suggestion}"
        )
        if refuse:
            raise UserError(message + " (or run with --force)")
        echo(message + " (starting anyway: --force)")
    elif v.fits is None:
        echo(f"plan: {peak} per rank; {plan.target.source}")
    return plan


def _size(size: int) -> str:
    return format_size(size)
