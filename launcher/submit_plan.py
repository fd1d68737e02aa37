"""Pure planning for `ftlaunch submit`: which address, which local paths travel with the job,
which must already be visible on the cluster, and the job's entrypoint and runtime_env.

The job runs `ftlaunch run job.yaml` on the head node, in a working directory that ftlaunch
builds and Ray uploads: the resolved config plus copies of the small local inputs it names.
"""

from __future__ import annotations

import secrets
import shlex
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from launcher.errors import UserError
from launcher.hub import is_hub_dataset, parse_model_id
from launcher.models import MODEL_ALIASES
from trainer.config import JobConfig
from trainer.formats.shards import is_remote_uri

BUNDLE_CONFIG = "job.yaml"
BUNDLE_INPUTS = "inputs"
# Ray's limit for one uploaded package is 500 MiB; bigger inputs belong on shared storage.
MAX_UPLOAD_LIMIT = 400 * 2**20
STOP_MARGIN_S = 30  # beyond training.preemption_grace_s before Ray SIGKILLs a stopped job
OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
}


def resolve_address(
    cli: str | None, configured: str | None, environ: Mapping[str, str]
) -> tuple[str, str]:
    """(address, where it came from): --address, then cluster.address, then RAY_ADDRESS.

    Raises:
        UserError: none of the three is set.
    """
    for value, source in (
        (cli, "--address"),
        (configured, "cluster.address"),
        (environ.get("RAY_ADDRESS"), "RAY_ADDRESS"),
    ):
        if value and value.strip():
            return value.strip(), source
    raise UserError(
        "--address: no Ray cluster given (use --address http://HEAD:8265, cluster.address "
        "or RAY_ADDRESS)"
    )


@dataclass(frozen=True)
class Upload:
    field: str
    source: Path
    target: str  # path inside the uploaded working directory


@dataclass(frozen=True)
class SubmissionPlan:
    config: dict[str, Any]  # the resolved config as the cluster will read it
    uploads: list[Upload] = field(default_factory=list)
    cluster_paths: dict[str, str] = field(default_factory=dict)  # field -> path to check there
    oversized: dict[str, int] = field(default_factory=dict)  # field -> bytes, over the limit


def local_path_fields(job: JobConfig) -> dict[str, str]:
    """The config fields that may name files on the submitting machine (aliases, URIs and Hub
    datasets do not: the head resolves those itself; see plan_submission for Hub model ids)."""
    fields = {} if job.model.path in MODEL_ALIASES else {"model.path": job.model.path}
    for split in ("train", "validation", "test"):
        location = getattr(job.data, split)
        if location is not None and not is_remote_uri(location) and not is_hub_dataset(location):
            fields[f"data.{split}"] = location
    return fields


def plan_submission(
    job: JobConfig, cwd: Path, max_upload: int, size_of: Callable[[Path], int | None]
) -> SubmissionPlan:
    """Decide, per local path, whether it is uploaded (exists here and fits the remaining
    `max_upload` bytes) or must already exist on the cluster (checked there before submitting).

    `size_of(path)` returns the bytes under `path`, or None if it does not exist here.
    Output and cache directories are paths on the head; relative ones are made absolute against
    `cwd`, as `ftlaunch run` would resolve them, so the job does not write inside Ray's
    temporary copy of the working directory.
    """
    raw = job.model_dump(mode="json")
    raw["cluster"]["address"] = "auto"  # the job's driver joins the cluster it runs on
    raw["output"]["dir"] = str(_absolute(job.output.dir, cwd))
    if job.data.cache_dir:
        raw["data"]["cache_dir"] = str(_absolute(job.data.cache_dir, cwd))
    uploads: list[Upload] = []
    targets: dict[Path, str] = {}
    cluster_paths: dict[str, str] = {}
    oversized: dict[str, int] = {}
    budget = max_upload
    for name, value in local_path_fields(job).items():
        source = _absolute(value, cwd)
        size = size_of(source)
        if name == "model.path" and size is None and parse_model_id(value) is not None:
            continue  # a Hub id (org/name), not a local directory: resolved on the head
        if source in targets:
            target = targets[source]
        elif size is not None and size <= budget:
            target = f"{BUNDLE_INPUTS}/{name.replace('.', '_')}/{source.name}"
            targets[source] = target
            uploads.append(Upload(name, source, target))
            budget -= size
        else:
            cluster_paths[name] = str(source)
            if size is not None:
                oversized[name] = size
            target = str(source)
        section, key = name.split(".")
        raw[section][key] = target
    return SubmissionPlan(raw, uploads, cluster_paths, oversized)


def _absolute(value: str, cwd: Path) -> Path:
    path = Path(value).expanduser()
    return path if path.is_absolute() else (cwd / path).resolve()


def new_submission_id(name: str) -> str:
    """Never all digits (those are SLURM job ids), unique, and readable in `ftlaunch list`."""
    return f"ftlaunch-{name}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"


def entrypoint() -> str:
    return shlex.join(["python", "-m", "launcher.cli", "run", BUNDLE_CONFIG])


def path_check_entrypoint(paths: list[str]) -> str:
    """A job that prints, as JSON, which of `paths` the head node cannot see."""
    code = (
        "import json, os, sys; "
        "print('FTLAUNCH_MISSING=' + json.dumps([p for p in sys.argv[1:] if not os.path.exists(p)]))"
    )
    return shlex.join(["python", "-c", code, *paths])


def build_runtime_env(
    working_dir: Path,
    code_dirs: list[Path],
    requirements: list[str],
    sealed_env: Mapping[str, str],
    preemption_grace_s: float,
) -> dict[str, Any]:
    """The job's runtime_env: the bundle as working_dir, ftlaunch's own packages as py_modules
    (the cluster runs the submitting client's code), optional pip requirements, and env vars
    that hold no plain secret (see cluster/secret_env.py)."""
    env_vars = {
        **OFFLINE_ENV,
        **sealed_env,
        # the driver's ray.init adds worker env vars on top of the job's; allow that merge
        "RAY_OVERRIDE_JOB_RUNTIME_ENV": "1",
        # `ftlaunch stop` sends SIGTERM; give the preemption checkpoint time before SIGKILL
        "RAY_JOB_STOP_WAIT_TIME_S": str(int(preemption_grace_s) + STOP_MARGIN_S),
    }
    runtime_env: dict[str, Any] = {
        "working_dir": str(working_dir),
        "py_modules": [str(d) for d in code_dirs],
        "excludes": ["__pycache__", "*.pyc"],
        "env_vars": env_vars,
    }
    if requirements:
        runtime_env["pip"] = list(requirements)
    return runtime_env


def read_requirements(path: Path) -> list[str]:
    """Requirement lines of a requirements.txt (comments and blanks dropped).

    Raises:
        UserError: the file cannot be read.
    """
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise UserError(f"--requirements: cannot read {path} ({exc.strerror or exc})") from None
    return [s for s in (line.split("#", 1)[0].strip() for line in lines) if s]
