"""Ray cluster-launcher YAML (`ray up`) for AWS and GCP: a CPU head and one GPU worker node type
that the autoscaler launches on demand (`min_workers: 0`, `max_workers` = the job's nodes). Pure.

Every node runs the ftlaunch image (`docker:`), token authentication on: the token file
`~/.ray/auth_token` is copied from the machine that runs `ray up` to every node (`file_mounts`),
and `RAY_AUTH_MODE=token` is exported for every command. The resolved job file is written to
the head as `~/ftlaunch/job.yaml`; `ray exec CLUSTER.yaml "ftlaunch run ~/ftlaunch/job.yaml
--address auto"` runs it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from launcher.errors import UserError
from launcher.render.common import (
    JOB_PATH,
    RAY_PORT,
    RenderContext,
    custom_resources,
    job_yaml,
    resources_flag,
    write_file_command,
)
from launcher.render.shape import GIB

TOKEN_PATH = "~/.ray/auth_token"
HEAD_TYPE = "ray.head.cpu"
WORKER_TYPE = "ray.worker.gpu"


@dataclass(frozen=True)
class Machine:
    name: str
    cpus: int
    memory_gib: int
    accelerator: str | None = None  # GCP's acceleratorType


# (GPU type, GPUs per node) -> machine; the shapes the clouds sell.
AWS_GPU_MACHINES = {
    ("H100", 8): Machine("p5.48xlarge", 192, 2048),
    ("A100", 8): Machine("p4d.24xlarge", 96, 1152),
    ("A10G", 1): Machine("g5.xlarge", 4, 16),
    ("A10G", 4): Machine("g5.12xlarge", 48, 192),
    ("A10G", 8): Machine("g5.48xlarge", 192, 768),
    ("L4", 1): Machine("g6.xlarge", 4, 16),
    ("L4", 4): Machine("g6.12xlarge", 48, 192),
    ("L4", 8): Machine("g6.48xlarge", 192, 768),
    ("L40S", 1): Machine("g6e.xlarge", 4, 32),
    ("L40S", 4): Machine("g6e.12xlarge", 48, 384),
    ("L40S", 8): Machine("g6e.48xlarge", 192, 1536),
    ("T4", 1): Machine("g4dn.xlarge", 4, 16),
    ("T4", 4): Machine("g4dn.12xlarge", 48, 192),
    ("V100", 1): Machine("p3.2xlarge", 8, 61),
    ("V100", 4): Machine("p3.8xlarge", 32, 244),
    ("V100", 8): Machine("p3.16xlarge", 64, 488),
}
GCP_GPU_MACHINES = {
    ("H100", 8): Machine("a3-highgpu-8g", 208, 1872, "nvidia-h100-80gb"),
    ("A100", 1): Machine("a2-highgpu-1g", 12, 85, "nvidia-tesla-a100"),
    ("A100", 2): Machine("a2-highgpu-2g", 24, 170, "nvidia-tesla-a100"),
    ("A100", 4): Machine("a2-highgpu-4g", 48, 340, "nvidia-tesla-a100"),
    ("A100", 8): Machine("a2-highgpu-8g", 96, 680, "nvidia-tesla-a100"),
    ("L4", 1): Machine("g2-standard-8", 8, 32, "nvidia-l4"),
    ("L4", 2): Machine("g2-standard-24", 24, 96, "nvidia-l4"),
    ("L4", 4): Machine("g2-standard-48", 48, 192, "nvidia-l4"),
    ("L4", 8): Machine("g2-standard-96", 96, 384, "nvidia-l4"),
    ("T4", 1): Machine("n1-standard-8", 8, 30, "nvidia-tesla-t4"),
    ("T4", 2): Machine("n1-standard-16", 16, 60, "nvidia-tesla-t4"),
    ("T4", 4): Machine("n1-standard-32", 32, 120, "nvidia-tesla-t4"),
    ("V100", 8): Machine("n1-standard-64", 64, 240, "nvidia-tesla-v100"),
}
AWS_HEAD = Machine("m5.2xlarge", 8, 32)
GCP_HEAD = Machine("n2-standard-8", 8, 32)
GCP_IMAGE = "projects/deeplearning-platform-release/global/images/family/common-cu128-ubuntu-2204-nvidia-570"


def render_aws(ctx: RenderContext) -> list[dict[str, Any]]:
    """`ray up` YAML for AWS (EC2; spot workers with --spot)."""
    machine = worker_machine(ctx, AWS_GPU_MACHINES, "ray-aws")
    worker: dict[str, Any] = {"InstanceType": machine.name, **_aws_disk()}
    if ctx.options.spot:
        worker["InstanceMarketOptions"] = {"MarketType": "spot"}
    provider = {"type": "aws", "region": ctx.options.region or "us-west-2"}
    head = {"InstanceType": AWS_HEAD.name, **_aws_disk()}
    return [_launcher_config(ctx, provider, head, worker, machine)]


def render_gcp(ctx: RenderContext) -> list[dict[str, Any]]:
    """`ray up` YAML for GCP (Compute Engine; preemptible workers with --spot)."""
    if not ctx.options.project_id:
        raise UserError("--project-id: ray-gcp needs the GCP project to launch nodes in")
    machine = worker_machine(ctx, GCP_GPU_MACHINES, "ray-gcp")
    region = ctx.options.region or "us-central1"
    provider = {
        "type": "gcp",
        "region": region,
        "availability_zone": f"{region}-a",
        "project_id": ctx.options.project_id,
    }
    # An object, as in the Compute API (Ray's own GCP examples wrongly use a list: ray#46248).
    # GPUs cannot live-migrate, and preemptible VMs cannot restart on their own.
    scheduling: dict[str, Any] = {"onHostMaintenance": "TERMINATE"}
    if ctx.options.spot:
        scheduling |= {"preemptible": True, "automaticRestart": False}
    worker: dict[str, Any] = {"machineType": machine.name, **_gcp_disk(), "scheduling": scheduling}
    if machine.accelerator and ctx.shape.gpus:
        worker["guestAccelerators"] = [
            {"acceleratorType": machine.accelerator, "acceleratorCount": ctx.shape.gpus}
        ]
        worker["metadata"] = {"items": [{"key": "install-nvidia-driver", "value": "True"}]}
    head = {"machineType": GCP_HEAD.name, **_gcp_disk()}
    return [_launcher_config(ctx, provider, head, worker, machine)]


def worker_machine(
    ctx: RenderContext, catalog: dict[tuple[str, int], Machine], target: str
) -> Machine:
    """The worker machine: --instance-type, else the catalog's machine for --gpu-type x GPUs.

    Raises:
        UserError: no --gpu-type for a GPU job, a shape the catalog does not know, or a machine
            smaller than the rendered node shape.
    """
    shape, o = ctx.shape, ctx.options
    if o.instance_type:
        return Machine(o.instance_type, shape.cpus, shape.memory // GIB)
    if not shape.gpus:
        raise UserError(f"--instance-type: {target} needs one for a job without GPUs")
    if not o.gpu_type:
        known = sorted({gpu for gpu, _ in catalog})
        raise UserError(
            f"--gpu-type: {target} needs one of {', '.join(known)} (or --instance-type)"
        )
    machine = catalog.get((o.gpu_type.upper(), shape.gpus))
    if machine is None:
        sizes = sorted(n for gpu, n in catalog if gpu == o.gpu_type.upper())
        have = f"it has {o.gpu_type} machines with {sizes} GPUs" if sizes else "unknown GPU type"
        raise UserError(
            f"--gpus-per-node: {target} knows no machine with {shape.gpus} x {o.gpu_type} "
            f"({have}); pass --instance-type, or another --gpus-per-node"
        )
    if machine.cpus < shape.cpus or machine.memory_gib * GIB < shape.memory:
        raise UserError(
            f"cluster.cpus_per_worker: {machine.name} has {machine.cpus} CPUs and "
            f"{machine.memory_gib} GiB; the node's workers need {shape.cpus} CPUs and "
            f"{shape.memory / GIB:g} GiB"
        )
    return machine


def _launcher_config(
    ctx: RenderContext,
    provider: dict[str, Any],
    head_node: dict[str, Any],
    worker_node: dict[str, Any],
    machine: Machine,
) -> dict[str, Any]:
    nodes = ctx.shape.nodes
    # The whole machine to Ray: a node type's resources are what the autoscaler plans with.
    worker_resources = {"CPU": machine.cpus, "GPU": ctx.shape.gpus, **custom_resources(ctx)}
    return {
        "cluster_name": ctx.name,
        "max_workers": nodes,
        "upscaling_speed": 1.0,
        "idle_timeout_minutes": 10,
        "docker": {
            "image": ctx.options.image,
            "container_name": "ftlaunch",
            "pull_before_run": True,
            "run_options": ["--ulimit nofile=65536:65536", "--shm-size=16g"],
        },
        "provider": provider,
        "auth": {"ssh_user": "ubuntu"},
        "available_node_types": {
            # CPU 0: no training worker lands on the head; ftlaunch's head services are 0-CPU.
            HEAD_TYPE: {"resources": {"CPU": 0}, "node_config": head_node},
            WORKER_TYPE: {
                "min_workers": 0,
                "max_workers": nodes,
                "resources": worker_resources,
                "node_config": worker_node,
            },
        },
        "head_node_type": HEAD_TYPE,
        "file_mounts": {TOKEN_PATH: TOKEN_PATH},
        "setup_commands": ["echo 'export RAY_AUTH_MODE=token' >> ~/.bashrc"],
        "head_setup_commands": [write_file_command(job_yaml(ctx.job), JOB_PATH)],
        "head_start_ray_commands": [
            "ray stop",
            f"ulimit -n 65536; RAY_AUTH_MODE=token ray start --head --port={RAY_PORT} "
            "--num-cpus=0 --autoscaling-config=~/ray_bootstrap_config.yaml "
            "--dashboard-host=0.0.0.0 --disable-usage-stats",
        ],
        "worker_start_ray_commands": [
            "ray stop",
            f"ulimit -n 65536; RAY_AUTH_MODE=token ray start --address=$RAY_HEAD_IP:{RAY_PORT} "
            f"--disable-usage-stats{resources_flag(ctx)}",
        ],
    }


def _aws_disk() -> dict[str, Any]:
    return {"BlockDeviceMappings": [{"DeviceName": "/dev/sda1", "Ebs": {"VolumeSize": 500}}]}


def _gcp_disk() -> dict[str, Any]:
    return {
        "disks": [
            {
                "boot": True,
                "autoDelete": True,
                "type": "PERSISTENT",
                "initializeParams": {"diskSizeGb": 500, "sourceImage": GCP_IMAGE},
            }
        ]
    }
