"""What memory the ranks will have (the shell around the pure plan): sizes the user gave,
else the nodes of a reachable Ray cluster, else this machine (which is where an embedded
cluster's workers run)."""

from __future__ import annotations

import math
import os
import shutil
import subprocess
from dataclasses import dataclass

from launcher.plan.advice import Target
from launcher.plan.memory import Layout
from launcher.plan.report import format_size
from trainer.config import JobConfig

NVIDIA_SMI_TIMEOUT_S = 10


@dataclass(frozen=True)
class NodeMemory:
    """One node as the plan sees it: its RAM and the memory of one of its GPUs (if known)."""

    ram_bytes: int
    gpu_bytes: int | None


def layout_for(job: JobConfig, nodes: list[NodeMemory] | None) -> Layout:
    """How many ranks share a node: what placement says, or all of them on one machine when the
    job starts its own cluster."""
    c = job.cluster
    # An elastic job may continue on its fewest workers, where each rank's share of the
    # partitioned states is largest: the plan must hold there.
    workers = c.min_workers()
    if c.placement == "strict_spread":
        per_node = 1
    elif c.num_nodes:
        per_node = math.ceil(workers / c.num_nodes)
    elif nodes and c.address:
        per_node = math.ceil(workers / len(nodes)) if c.placement == "spread" else workers
    else:
        per_node = workers
    return Layout(workers, max(1, per_node), "gpu" if c.uses_gpu() else "cpu")


def resolve_target(
    layout: Layout,
    nodes: list[NodeMemory],
    source: str,
    gpu_memory: int | None = None,
    cpu_memory: int | None = None,
) -> Target:
    """Memory per rank: a GPU's on GPU workers, the node's RAM shared by its ranks on CPU ones.
    Sizes given by the user win over what `nodes` (from `source`) report; the smallest node
    counts."""
    if layout.device == "gpu":
        if gpu_memory is not None:
            return Target(gpu_memory, f"--gpu-memory {format_size(gpu_memory)}")
        known = [n.gpu_bytes for n in nodes if n.gpu_bytes]
        if not known:
            return Target(None, f"GPU memory unknown ({source}); give --gpu-memory")
        return Target(min(known), f"{format_size(min(known))} GPUs ({source})")
    if cpu_memory is not None:
        ram, where = cpu_memory, f"--cpu-memory {format_size(cpu_memory)}"
    elif nodes:
        ram, where = (
            min(n.ram_bytes for n in nodes),
            f"{format_size(min(n.ram_bytes for n in nodes))} RAM ({source})",
        )
    else:
        return Target(None, f"node memory unknown ({source}); give --cpu-memory")
    share = ram // layout.workers_per_node
    return Target(share, f"{where} shared by {layout.workers_per_node} rank(s) per node")


def this_machine() -> list[NodeMemory]:
    """This machine's RAM and, if nvidia-smi answers, its smallest GPU."""
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return [NodeMemory(ram, _local_gpu_bytes())]


def _local_gpu_bytes() -> int | None:
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return None
    try:
        out = subprocess.run(
            [smi, "--query-gpu=memory.total", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=NVIDIA_SMI_TIMEOUT_S,
            check=True,
        ).stdout
        sizes = [int(line) * 2**20 for line in out.split() if line.strip().isdigit()]
    except (OSError, subprocess.SubprocessError):
        return None
    return min(sizes) if sizes else None


def cluster_nodes(address: str) -> list[NodeMemory]:
    """The alive nodes of the Ray cluster at `address` (Ray's `memory` resource: what it lets
    tasks use). GPU memory is not reported by Ray, so it stays unknown.

    Raises:
        cluster.errors.ClusterError: the cluster cannot be reached.
    """
    from cluster.ray.inventory import node_resources

    return [NodeMemory(int(r.get("memory", 0)), None) for r in node_resources(address)]
