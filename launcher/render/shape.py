"""The node shape a rendered cluster gets: how many worker nodes, and the GPUs, CPUs and memory
of each, derived from the job's `cluster` section with the command-line flags overriding.

Pure. The fit check is the one the Ray backend runs on a live cluster
(`cluster/placement/fit.py:request_problem`), applied to the nodes the manifest will ask for,
so a manifest whose workers could never be placed is refused here instead of on a paid cluster.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from cluster.placement.fit import Node, PlacementRequest, request_problem
from launcher.errors import UserError
from trainer.config import JobConfig

GIB = 2**30
# The largest GPU count one cloud machine offers (p5.48xlarge, a3-highgpu-8g, ND H100 v5): without
# --nodes or --gpus-per-node, a GPU job is packed onto as few such machines as it needs.
MAX_GPUS_PER_NODE = 8
# Ray gives a node's "memory" resource what its object store leaves: 70% of the memory by default.
RAY_MEMORY_SHARE = 0.7
# Memory a worker process needs when the job does not say (cluster.memory_per_worker): model
# loading and the data loader on a GPU node, the whole training step on a CPU node.
DEFAULT_GPU_WORKER_MEMORY = 32 * GIB
DEFAULT_CPU_WORKER_MEMORY = 4 * GIB


@dataclass(frozen=True)
class ShapeFlags:
    """The node-shape flags of `ftlaunch render`; None means: derive it from the job."""

    nodes: int | None = None
    gpus_per_node: int | None = None
    cpus_per_node: int | None = None
    memory_per_node: int | None = None  # bytes


@dataclass(frozen=True)
class NodeShape:
    """Worker nodes of one type, each holding `workers_per_node` training workers."""

    nodes: int
    gpus: int
    cpus: int
    memory: int  # bytes of the machine (the pod's limit on Kubernetes)
    workers: int  # the job's largest world size
    workers_per_node: int

    def ray_resources(self) -> dict[str, float]:
        return {"CPU": float(self.cpus), "GPU": float(self.gpus), "memory": self.ray_memory()}

    def ray_memory(self) -> float:
        return math.floor(self.memory * RAY_MEMORY_SHARE)


def node_shape(job: JobConfig, flags: ShapeFlags) -> NodeShape:
    """The worker nodes for `job`, checked to hold all its workers.

    Raises:
        UserError: a flag below 1, or workers that cannot be placed on the nodes (the line names
            the job field and the flags that set the shape).
    """
    _check_positive(flags)
    c = job.cluster
    workers = c.max_workers()
    nodes = _node_count(job, flags)
    per_node = math.ceil(workers / nodes)
    gpus = (
        flags.gpus_per_node
        if flags.gpus_per_node is not None
        else math.ceil(per_node * c.gpus_per_worker)
    )
    cpus = flags.cpus_per_node or max(1, math.ceil(per_node * c.cpus_per_worker))
    memory = flags.memory_per_node or _default_memory(job, per_node)
    shape = NodeShape(nodes, gpus, cpus, memory, workers, per_node)
    _check_fit(job, shape)
    return shape


def _check_positive(flags: ShapeFlags) -> None:
    problems = [
        f"{flag}: must be >= {low} (got {value})"
        for flag, value, low in (
            ("--nodes", flags.nodes, 1),
            ("--gpus-per-node", flags.gpus_per_node, 0),
            ("--cpus-per-node", flags.cpus_per_node, 1),
            ("--memory-per-node", flags.memory_per_node, 1),
        )
        if value is not None and value < low
    ]
    if problems:
        raise UserError(*problems)


def _node_count(job: JobConfig, flags: ShapeFlags) -> int:
    """--nodes, else cluster.num_nodes, else one node per worker for strict_spread, else as few
    nodes as hold the workers' GPUs (--gpus-per-node, or at most MAX_GPUS_PER_NODE each)."""
    c = job.cluster
    if flags.nodes is not None:
        return flags.nodes
    if c.num_nodes is not None:
        return c.num_nodes
    if c.placement == "strict_spread":
        return c.max_workers()
    if not c.uses_gpu():
        return 1
    per_node_gpus = flags.gpus_per_node or MAX_GPUS_PER_NODE
    workers_per_node = math.floor(per_node_gpus / c.gpus_per_worker + 1e-9)
    if workers_per_node < 1:
        raise UserError(
            f"cluster.gpus_per_worker: one worker needs {c.gpus_per_worker:g} GPU(s) but "
            f"--gpus-per-node is {per_node_gpus}"
        )
    nodes = math.ceil(c.max_workers() / workers_per_node)
    return 1 if c.placement == "pack" and nodes <= 1 else nodes


def _default_memory(job: JobConfig, per_node: int) -> int:
    c = job.cluster
    per_worker = c.memory_per_worker or (
        DEFAULT_GPU_WORKER_MEMORY if c.uses_gpu() else DEFAULT_CPU_WORKER_MEMORY
    )
    return math.ceil(per_node * per_worker / RAY_MEMORY_SHARE / GIB) * GIB


def _check_fit(job: JobConfig, shape: NodeShape) -> None:
    c = job.cluster
    per_worker = {"CPU": c.cpus_per_worker, "GPU": c.gpus_per_worker}
    if c.memory_per_worker:
        per_worker["memory"] = float(c.memory_per_worker)
    # Custom resources (accelerator_type:H100) are the cluster's to provide; the shape is checked
    # for what the manifest sets: CPUs, GPUs and memory.
    resources = shape.ray_resources()
    request = PlacementRequest(c.max_workers(), per_worker, c.placement, c.num_nodes)
    nodes = [Node(f"worker-{i}", resources) for i in range(shape.nodes)]
    problem = request_problem(request, nodes)
    if problem:
        raise UserError(
            f"{problem} (rendered nodes: {shape.nodes} x {{GPU: {shape.gpus}, CPU: "
            f"{shape.cpus}, memory: {shape.memory / GIB:g}GiB}}; set with --nodes, "
            "--gpus-per-node, --cpus-per-node, --memory-per-node)"
        )
