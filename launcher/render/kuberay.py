"""KubeRay manifests: a RayJob (a cluster made for one `ftlaunch run`, deleted when it ends) or a
long-lived RayCluster whose GPU worker group the autoscaler grows from zero. Pure.

Requires KubeRay >= 1.5 (`authOptions`). Token authentication is on in every pod: the token
comes from a Kubernetes Secret (key `auth_token`, Ray's and KubeRay's name) through
`secretKeyRef`, both in the pods' environment and in `authOptions`, so KubeRay gives it to the
pods it adds itself (the job submitter, the autoscaler sidecar).
"""

from __future__ import annotations

import json
from typing import Any

from launcher.errors import UserError
from launcher.render.common import (
    DASHBOARD_PORT,
    JOB_FILE,
    RAY_PORT,
    TOKEN_KEY,
    RenderContext,
    custom_resources,
    job_yaml,
    run_command,
    secret_env,
)
from launcher.render.shape import GIB

API_VERSION = "ray.io/v1"
RAY_VERSION = "2.60.0"  # the Ray of docker/Dockerfile's base image
JOB_MOUNT = "/ftlaunch/job"
OUTPUT_MOUNT = "/ftlaunch/output"
GPU_RESOURCE = "nvidia.com/gpu"
# NVIDIA GPU feature discovery's label (GPU operator): --gpu-type selects nodes by it.
GPU_PRODUCT_LABEL = "nvidia.com/gpu.product"
MANAGED_BY = {"app.kubernetes.io/managed-by": "ftlaunch"}


def render_rayjob(ctx: RenderContext) -> list[dict[str, Any]]:
    """A ConfigMap with the job file and a RayJob that runs it on a cluster sized for the job."""
    _check_options(ctx)
    config_map = _metadata(ctx, f"{ctx.name}-job")
    output_dir = f"{OUTPUT_MOUNT}/{ctx.name}" if ctx.options.output_pvc else None
    job = {
        "apiVersion": API_VERSION,
        "kind": "RayJob",
        "metadata": _metadata(ctx, ctx.name),
        "spec": {
            "entrypoint": run_command(f"{JOB_MOUNT}/{JOB_FILE}"),
            "shutdownAfterJobFinishes": True,
            "ttlSecondsAfterFinished": 300,
            "rayClusterSpec": cluster_spec(ctx, autoscaling=False, job_config=config_map["name"]),
        },
    }
    return [
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": config_map,
            "data": {JOB_FILE: job_yaml(ctx.job, output_dir)},
        },
        job,
    ]


def render_raycluster(ctx: RenderContext) -> list[dict[str, Any]]:
    """A RayCluster whose GPU worker group scales between zero and the job's node count; jobs
    reach it with `ftlaunch submit` through the head's dashboard port."""
    _check_options(ctx)
    return [
        {
            "apiVersion": API_VERSION,
            "kind": "RayCluster",
            "metadata": _metadata(ctx, ctx.name),
            "spec": cluster_spec(ctx, autoscaling=True, job_config=None),
        }
    ]


def cluster_spec(ctx: RenderContext, autoscaling: bool, job_config: str | None) -> dict[str, Any]:
    """The RayCluster spec: a CPU head that runs no workers, and one GPU worker group."""
    nodes = ctx.shape.nodes
    spec: dict[str, Any] = {
        "rayVersion": RAY_VERSION,
        "enableInTreeAutoscaling": autoscaling,
        "authOptions": {"mode": "token", "secretName": ctx.options.secret},
        "headGroupSpec": {
            # num-cpus 0: training workers never land on the head; ftlaunch's head services
            # (collector, shard and model servers) are 0-CPU actors and still run there.
            "rayStartParams": {"num-cpus": "0", "dashboard-host": "0.0.0.0"},
            "template": {"spec": _head_pod(ctx, job_config)},
        },
        "workerGroupSpecs": [
            {
                "groupName": "gpu-workers" if ctx.shape.gpus else "cpu-workers",
                "replicas": 0 if autoscaling else nodes,
                "minReplicas": 0 if autoscaling else nodes,
                "maxReplicas": nodes,
                "rayStartParams": _worker_start_params(ctx),
                "template": {"spec": _worker_pod(ctx)},
            }
        ],
    }
    if autoscaling:
        spec["autoscalerOptions"] = {"idleTimeoutSeconds": 300, "upscalingMode": "Default"}
    return spec


def _head_pod(ctx: RenderContext, job_config: str | None) -> dict[str, Any]:
    o = ctx.options
    env = _auth_env(ctx) + [_secret_ref(ctx, name, name) for name in secret_env(ctx.job)]
    mounts, volumes = [], []
    if job_config is not None:
        mounts.append({"name": "job", "mountPath": JOB_MOUNT, "readOnly": True})
        volumes.append({"name": "job", "configMap": {"name": job_config}})
    if o.output_pvc:
        mounts.append({"name": "output", "mountPath": OUTPUT_MOUNT})
        volumes.append({"name": "output", "persistentVolumeClaim": {"claimName": o.output_pvc}})
    container: dict[str, Any] = {
        "name": "ray-head",
        "image": o.image,
        "env": env,
        "resources": _resources(o.head_cpus, o.head_memory, 0),
        "ports": [
            {"containerPort": RAY_PORT, "name": "gcs-server"},
            {"containerPort": DASHBOARD_PORT, "name": "dashboard"},
            {"containerPort": 10001, "name": "client"},
        ],
    }
    if mounts:
        container["volumeMounts"] = mounts
    pod: dict[str, Any] = {"containers": [container]}
    if volumes:
        pod["volumes"] = volumes
    return pod


def _worker_start_params(ctx: RenderContext) -> dict[str, str]:
    # KubeRay passes the value to `ray start --resources` as it is: a JSON object in quotes.
    custom = custom_resources(ctx)
    return {"resources": json.dumps(json.dumps(custom))} if custom else {}


def _worker_pod(ctx: RenderContext) -> dict[str, Any]:
    shape = ctx.shape
    container = {
        "name": "ray-worker",
        "image": ctx.options.image,
        "env": _auth_env(ctx),
        "resources": _resources(shape.cpus, shape.memory, shape.gpus),
        # NCCL and Ray's object store use shared memory; a container's default /dev/shm is 64 MB.
        "volumeMounts": [{"name": "dshm", "mountPath": "/dev/shm"}],
    }
    pod: dict[str, Any] = {
        "containers": [container],
        "volumes": [{"name": "dshm", "emptyDir": {"medium": "Memory"}}],
    }
    selector = dict(ctx.options.node_selector)
    if ctx.options.gpu_type:
        selector[GPU_PRODUCT_LABEL] = ctx.options.gpu_type
    if selector:
        pod["nodeSelector"] = selector
    if shape.gpus:  # GPU node pools are usually tainted so that only GPU pods land there
        pod["tolerations"] = [{"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}]
    return pod


def _auth_env(ctx: RenderContext) -> list[dict[str, Any]]:
    return [
        {"name": "RAY_AUTH_MODE", "value": "token"},
        _secret_ref(ctx, "RAY_AUTH_TOKEN", TOKEN_KEY),
    ]


def _secret_ref(ctx: RenderContext, name: str, key: str) -> dict[str, Any]:
    return {"name": name, "valueFrom": {"secretKeyRef": {"name": ctx.options.secret, "key": key}}}


def _resources(cpus: int, memory: int, gpus: int) -> dict[str, Any]:
    amounts: dict[str, Any] = {"cpu": str(cpus), "memory": quantity(memory)}
    if gpus:
        amounts[GPU_RESOURCE] = str(gpus)
    return {"requests": dict(amounts), "limits": dict(amounts)}


def quantity(size: int) -> str:
    """Bytes as a Kubernetes quantity: `16Gi` when whole gibibytes, else the plain number."""
    return f"{size // GIB}Gi" if size % GIB == 0 else str(size)


def _metadata(ctx: RenderContext, name: str) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "labels": dict(MANAGED_BY)}
    if ctx.options.namespace:
        meta["namespace"] = ctx.options.namespace
    return meta


def _check_options(ctx: RenderContext) -> None:
    if ctx.options.spot:
        raise UserError(
            "--spot: on Kubernetes spot capacity is a node pool; select it with --node-selector "
            "(e.g. cloud.google.com/gke-spot=true or eks.amazonaws.com/capacityType=SPOT)"
        )
