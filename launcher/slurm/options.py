"""`ftlaunch slurm` options: check them (one line per problem, naming the flag) and turn them, with
the job config, into the `SbatchRequest` the script is rendered from. Pure, unit-tested."""

from __future__ import annotations

import math
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from cluster.placement.fit import placement_problem
from cluster.slurm.script import SbatchRequest
from launcher.errors import UserError
from trainer.config import JobConfig

# Seconds between USR1 and the time limit on top of training.preemption_grace_s: Ray teardown
# and slack for SLURM's signal timing.
SIGNAL_MARGIN_S = 30
DEFAULT_JOIN_TIMEOUT_S = 300
SLURM_NAME = re.compile(r"[A-Za-z0-9_.\-]+")
SBATCH_OPTION = re.compile(r"--(?P<name>[a-z][a-z0-9-]*)(?:=(?P<value>\S.*))?")
# Options ftlaunch writes itself: a second value would silently win or conflict.
OWN_OPTIONS = {
    "job-name": None,
    "nodes": "--nodes",
    "ntasks-per-node": None,
    "cpus-per-task": "--cpus-per-node",
    "gpus-per-node": "--gpus-per-node",
    "partition": "--partition",
    "account": "--account",
    "time": "--time",
    "chdir": None,
    "output": None,
    "open-mode": None,
    "signal": None,
    "requeue": "--requeue",
    "no-requeue": "--requeue",
}
_TIME_FORMS = [  # SLURM's --time formats, as (regex, fields in order)
    (re.compile(r"(\d+)"), ("m",)),
    (re.compile(r"(\d+):(\d+)"), ("m", "s")),
    (re.compile(r"(\d+):(\d+):(\d+)"), ("h", "m", "s")),
    (re.compile(r"(\d+)-(\d+)"), ("d", "h")),
    (re.compile(r"(\d+)-(\d+):(\d+)"), ("d", "h", "m")),
    (re.compile(r"(\d+)-(\d+):(\d+):(\d+)"), ("d", "h", "m", "s")),
]
_UNIT_S = {"d": 86400, "h": 3600, "m": 60, "s": 1}
_LIMITS = {"h": 24, "m": 60, "s": 60}  # for every field but the first


@dataclass(frozen=True)
class SlurmOptions:
    nodes: int
    gpus_per_node: int | None = None
    cpus_per_node: int | None = None
    partition: str | None = None
    time: str | None = None
    account: str | None = None
    requeue: bool = False
    resume: bool = False
    join_timeout_s: int = DEFAULT_JOIN_TIMEOUT_S
    sbatch_args: tuple[str, ...] = ()  # --sbatch-arg, e.g. --qos=high, --mem=0, --exclusive
    setup: tuple[str, ...] = ()  # --setup, e.g. 'module load cuda', 'source venv/bin/activate'


def parse_time_limit(text: str) -> int | None:
    """Seconds in a SLURM --time value (None for UNLIMITED).

    Raises:
        ValueError: not one of SLURM's formats, a field out of range, or zero.
    """
    if text.strip().upper() in ("UNLIMITED", "INFINITE"):
        return None
    for pattern, fields in _TIME_FORMS:
        match = pattern.fullmatch(text.strip())
        if not match:
            continue
        values = [int(v) for v in match.groups()]
        for field, value in list(zip(fields, values, strict=True))[1:]:
            if value >= _LIMITS[field]:
                raise ValueError(f"{field!r} field must be < {_LIMITS[field]}")
        seconds = sum(_UNIT_S[f] * v for f, v in zip(fields, values, strict=True))
        if seconds <= 0:
            raise ValueError("must be longer than 0")
        return seconds
    raise ValueError(
        "expected MINUTES, MINUTES:SECONDS, HOURS:MINUTES:SECONDS, DAYS-HOURS, "
        "DAYS-HOURS:MINUTES or DAYS-HOURS:MINUTES:SECONDS"
    )


def signal_grace_s(job: JobConfig) -> int:
    return math.ceil(job.training.preemption_grace_s) + SIGNAL_MARGIN_S


def default_cpus_per_node(job: JobConfig, nodes: int) -> int:
    """Enough CPUs on each node for its share of the workers (spread evenly)."""
    c = job.cluster
    return max(1, math.ceil(math.ceil(c.max_workers() / nodes) * c.cpus_per_worker))


def default_gpus_per_node(job: JobConfig, nodes: int) -> int:
    c = job.cluster
    return math.ceil(math.ceil(c.max_workers() / nodes) * c.gpus_per_worker) if c.uses_gpu() else 0


def option_problems(options: SlurmOptions, job: JobConfig) -> list[str]:
    """Every problem with the options, one line each, naming the flag; [] when all is well."""
    o = options
    problems = []
    if o.nodes < 1:
        problems.append(f"--nodes: must be >= 1 (got {o.nodes})")
    for flag, value in (("--cpus-per-node", o.cpus_per_node), ("--gpus-per-node", o.gpus_per_node)):
        if value is not None and value < (1 if flag == "--cpus-per-node" else 0):
            problems.append(
                f"{flag}: must be >= {1 if flag == '--cpus-per-node' else 0} (got {value})"
            )
    if o.join_timeout_s < 1:
        problems.append(f"--join-timeout: must be >= 1 second (got {o.join_timeout_s})")
    for flag, value in (("--partition", o.partition), ("--account", o.account)):
        allowed = r"[A-Za-z0-9_.\-,]+" if flag == "--partition" else SLURM_NAME.pattern
        if value is not None and not re.fullmatch(allowed, value):
            problems.append(f"{flag}: {value!r} is not a SLURM name (letters, digits, _ . -)")
    if o.time is not None:
        problems += _time_problems(o.time, signal_grace_s(job))
    problems += sbatch_arg_problems(o.sbatch_args) + setup_problems(o.setup)
    if not problems and o.cpus_per_node is not None:
        problems += _fit_problems(options, job)
    return problems


def sbatch_arg_problems(args: tuple[str, ...]) -> list[str]:
    """Each --sbatch-arg must be one long sbatch option (`--qos=high`, `--exclusive`) that
    ftlaunch does not set itself."""
    problems = []
    for arg in args:
        match = SBATCH_OPTION.fullmatch(arg)
        if match is None or "\n" in arg or arg != arg.strip():
            problems.append(
                f"--sbatch-arg: {arg!r} is not a long sbatch option like --qos=high or --exclusive"
            )
        elif match["name"] in OWN_OPTIONS:
            own = OWN_OPTIONS[match["name"]]
            how = f"use ftlaunch's {own}" if own else "ftlaunch sets it itself"
            problems.append(f"--sbatch-arg: {arg!r}: {how}")
    return problems


def setup_problems(lines: tuple[str, ...]) -> list[str]:
    """Each --setup is one non-empty shell line."""
    return [
        f"--setup: {line!r} must be one non-empty shell line"
        for line in lines
        if not line.strip() or "\n" in line or "\r" in line
    ]


def _time_problems(text: str, grace_s: int) -> list[str]:
    try:
        seconds = parse_time_limit(text)
    except ValueError as exc:
        return [f"--time: {text!r}: {exc}"]
    if seconds is not None and seconds <= grace_s:
        return [
            f"--time: {text} leaves no time to train: the checkpoint signal comes {grace_s} s "
            f"before the limit (training.preemption_grace_s + {SIGNAL_MARGIN_S} s)"
        ]
    return []


def _fit_problems(options: SlurmOptions, job: JobConfig) -> list[str]:
    c = job.cluster
    node = {"CPU": float(options.cpus_per_node or 0), "GPU": float(options.gpus_per_node or 0)}
    per_worker = {"CPU": c.cpus_per_worker, "GPU": c.gpus_per_worker}
    problem = placement_problem(c.max_workers(), per_worker, [node] * options.nodes)
    return (
        [f"{problem} (--nodes {options.nodes} x --cpus-per-node/--gpus-per-node)"]
        if problem
        else []
    )


def build_request(
    options: SlurmOptions,
    job: JobConfig,
    config_path: Path,
    submission_dir: Path,
    workdir: Path,
    python: str = sys.executable,
) -> SbatchRequest:
    """The validated request for `render_sbatch`.

    Raises:
        UserError: one line per bad option or unusable path.
    """
    problems = option_problems(options, job)
    output_dir = Path(job.output.dir).expanduser()
    output_dir = output_dir if output_dir.is_absolute() else workdir / output_dir
    for what, path in (("output.dir", output_dir), ("working directory", workdir)):
        if any(ch.isspace() for ch in str(path)):
            problems.append(f"{what}: {path}: SLURM options cannot carry paths with whitespace")
    if problems:
        raise UserError(*problems)
    return SbatchRequest(
        job_name="ftl-" + re.sub(r"[^A-Za-z0-9_.\-]", "_", job.name),
        nodes=options.nodes,
        cpus_per_node=options.cpus_per_node or default_cpus_per_node(job, options.nodes),
        gpus_per_node=options.gpus_per_node
        if options.gpus_per_node is not None
        else default_gpus_per_node(job, options.nodes),
        partition=options.partition,
        time_limit=options.time,
        account=options.account,
        signal_grace_s=signal_grace_s(job),
        requeue=options.requeue,
        resume=options.resume,
        join_timeout_s=options.join_timeout_s,
        workdir=workdir,
        submission_dir=submission_dir,
        config_path=config_path,
        output_dir=output_dir,
        python=python,
        extra_sbatch=options.sbatch_args,
        setup=options.setup,
    )
