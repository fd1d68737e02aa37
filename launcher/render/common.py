"""What every rendered target shares: the options, the job file shipped with the cluster, the
command that runs it, names and the image. Pure."""

from __future__ import annotations

import base64
import json
import math
import re
import shlex
from dataclasses import dataclass, field

import yaml

from launcher.render.shape import NodeShape, ShapeFlags
from trainer.config import JobConfig

# The image docker/Dockerfile builds (`docker build -f docker/Dockerfile -t ftlaunch:0.1.0 .`);
# push it where the cluster can pull it and pass --image REGISTRY/ftlaunch:0.1.0.
DEFAULT_IMAGE = "ftlaunch:0.1.0"
# Ray's GCS port inside the cluster: ftlaunch's own, not SkyPilot's internal Ray (6380).
RAY_PORT = 6379
DASHBOARD_PORT = 8265
# The Secret (Kubernetes) holding the cluster's token under Ray's key, and the secret_env values.
DEFAULT_SECRET = "ftlaunch"
TOKEN_KEY = "auth_token"
JOB_FILE = "job.yaml"
JOB_PATH = "~/ftlaunch/job.yaml"  # on the head of a cluster-launcher or SkyPilot cluster


@dataclass(frozen=True)
class RenderOptions:
    """The flags of `ftlaunch render`, checked by the renderers that use them."""

    shape: ShapeFlags = field(default_factory=ShapeFlags)
    gpu_type: str | None = None
    image: str = DEFAULT_IMAGE
    namespace: str | None = None
    spot: bool = False
    secret: str = DEFAULT_SECRET
    output_pvc: str | None = None
    node_selector: tuple[tuple[str, str], ...] = ()
    instance_type: str | None = None
    region: str | None = None
    project_id: str | None = None  # GCP
    head_cpus: int = 4
    head_memory: int = 16 * 2**30


@dataclass(frozen=True)
class RenderContext:
    """A job with the node shape it gets, as every renderer receives it."""

    job: JobConfig
    shape: NodeShape
    options: RenderOptions

    @property
    def name(self) -> str:
        return resource_name(self.job.name)


def resource_name(job_name: str) -> str:
    """`ftl-<job name>` as a DNS-1123 label (Kubernetes objects, cluster names): lowercase letters,
    digits and '-', short enough for KubeRay's derived names (<name>-head-xxxxx)."""
    slug = re.sub(r"[^a-z0-9-]+", "-", job_name.lower()).strip("-") or "job"
    return f"ftl-{slug}"[:40].rstrip("-")


def job_yaml(job: JobConfig, output_dir: str | None = None) -> str:
    """The resolved job file that travels with the cluster; the driver joins the cluster it runs
    on (`cluster.address: auto`), and the run lands in `output_dir` when a volume holds it."""
    data = job.model_dump(mode="json")
    data["cluster"]["address"] = "auto"
    if output_dir is not None:
        data["output"]["dir"] = output_dir
    return yaml.safe_dump(data, sort_keys=False)


def run_command(job_path: str) -> str:
    """`ftlaunch run JOB --address auto`: the driver runs on the head and joins its Ray. The
    path is one of ftlaunch's constants, left unquoted so that `~` expands."""
    return f"ftlaunch run {job_path} --address auto"


def custom_resources(ctx: RenderContext) -> dict[str, int]:
    """The job's `cluster.custom_resources` (accelerator_type:H100, ...) that one worker node
    offers: enough for its workers, whole numbers as Ray's launcher wants. Declared on the node
    so that an autoscaler knows which node type serves a request for them."""
    per_node = ctx.shape.workers_per_node
    return {
        name: math.ceil(amount * per_node - 1e-9)
        for name, amount in ctx.job.cluster.custom_resources.items()
    }


def resources_flag(ctx: RenderContext) -> str:
    """` --resources='{...}'` for `ray start` on a worker node, or nothing."""
    custom = custom_resources(ctx)
    return f" --resources={shlex.quote(json.dumps(custom))}" if custom else ""


def secret_env(job: JobConfig) -> list[str]:
    """Variables the driver needs from a secret store: the job's `cluster.secret_env`."""
    return list(job.cluster.secret_env)


def write_file_command(text: str, path: str) -> str:
    """One shell line that writes `text` to `path` (created beside it, then renamed); base64, so
    no character of the text can break the quoting of the launcher that runs the line."""
    encoded = base64.b64encode(text.encode()).decode()
    return (
        f"mkdir -p $(dirname {path}) && echo {shlex.quote(encoded)} | base64 -d > {path}.tmp "
        f"&& mv {path}.tmp {path}"
    )
