"""From `cluster.*` placement settings to Ray Train's ScalingConfig (pure, unit-tested).

`placement_plan` maps pack/spread/strict_spread to Ray's placement strategies, the per-worker
resources to `resources_per_worker`, and `num_nodes` to per-worker label selectors on Ray's
built-in node-id label: Ray has no "exactly N nodes" strategy, so ftlaunch picks the nodes itself
(see `cluster/placement/fit.py:choose_nodes`). `cluster/placement/reserve.py` is the thin shell
that reserves the same bundles once, with a deadline, before Ray Train starts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from cluster.placement.fit import (
    Node,
    PlacementRequest,
    assign_workers,
    choose_nodes,
    describe_resources,
    request_problem,
)
from cluster.placement.scaling import NeverFits, NodeType, ScaleUp, scale_up
from trainer.config.cluster import ClusterConfig

RAY_STRATEGY = {"pack": "PACK", "spread": "SPREAD", "strict_spread": "STRICT_SPREAD"}
NODE_ID_LABEL = "ray.io/node-id"  # ray._raylet.RAY_NODE_ID_KEY, set on every node by Ray


class PlacementError(Exception):
    """The request can never be placed, or was not placed in time; the message says why."""


def worker_resources(cluster: ClusterConfig) -> dict[str, float]:
    """What each worker reserves, in Ray's resource names."""
    resources = {"CPU": cluster.cpus_per_worker}
    if cluster.uses_gpu():
        resources["GPU"] = cluster.gpus_per_worker
    if cluster.memory_per_worker is not None:
        resources["memory"] = float(cluster.memory_per_worker)
    return resources | dict(cluster.custom_resources)


def placement_request(cluster: ClusterConfig) -> PlacementRequest:
    return PlacementRequest(
        num_workers=cluster.min_workers(),  # what must fit; an elastic job grows to max
        per_worker=worker_resources(cluster),
        strategy=cluster.placement,
        num_nodes=cluster.num_nodes,
    )


@dataclass(frozen=True)
class PlacementPlan:
    """Everything ScalingConfig needs about where workers go (`scaling_kwargs()`)."""

    num_workers: int  # reserved before the start (an elastic job's minimum)
    resources_per_worker: dict[str, float]
    strategy: str
    label_selector: list[dict[str, str]] | None = None
    max_workers: int | None = None  # elastic: Ray Train starts as many as fit, up to this

    def scaling_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {
            "num_workers": self.worker_count(),
            "use_gpu": self.resources_per_worker.get("GPU", 0) > 0,
            "resources_per_worker": dict(self.resources_per_worker),
            "placement_strategy": self.strategy,
        }
        if self.label_selector is not None:  # only Ray Train v2's ScalingConfig knows it
            kwargs["label_selector"] = self.label_selector
        return kwargs

    def worker_count(self) -> int | tuple[int, int]:
        """Ray Train's `num_workers`: a (min, max) pair makes it restart a failed group on the
        workers that can be placed (elastic training, Ray Train v2)."""
        if self.max_workers is None or self.max_workers == self.num_workers:
            return self.num_workers
        return (self.num_workers, self.max_workers)

    def bundles(self) -> list[dict[str, float]]:
        return [dict(self.resources_per_worker) for _ in range(self.num_workers)]

    def process_group_backend(self) -> str:
        """torch.distributed's backend: gloo on CPU workers. On GPU workers NCCL for CUDA tensors
        and gloo for the small CPU tensors the loop gathers (metrics windows, stop flags, memory
        peaks), which a plain "nccl" group has no backend for."""
        return "cpu:gloo,cuda:nccl" if self.resources_per_worker.get("GPU", 0) > 0 else "gloo"


def placement_plan(cluster: ClusterConfig, nodes: Sequence[Node]) -> PlacementPlan:
    """Check the request against the cluster's nodes and say how Ray should place the workers.

    Raises:
        PlacementError: the workers can never be placed on these nodes (says what is missing).
    """
    request = placement_request(cluster)
    problem = request_problem(request, nodes)
    if problem:
        raise PlacementError(problem)
    selectors = None
    if request.num_nodes is not None and request.strategy == "spread":
        selectors = [{NODE_ID_LABEL: node_id} for node_id in assign_workers(request, nodes)]
    elif request.num_nodes is not None and request.strategy == "pack":
        ids = sorted(node.node_id for node in choose_nodes(request, nodes))
        selectors = [{NODE_ID_LABEL: f"in({','.join(ids)})"}] * request.num_workers
    # strict_spread: num_nodes equals num_workers (schema rule), STRICT_SPREAD already means it.
    return PlacementPlan(
        num_workers=request.num_workers,
        resources_per_worker=dict(request.per_worker),
        strategy=RAY_STRATEGY[request.strategy],
        label_selector=selectors,
        max_workers=cluster.max_workers(),
    )


def placement_problem_now(cluster: ClusterConfig, nodes: Sequence[Node]) -> str | None:
    """Why the workers do not fit the live `nodes` (None if they do)."""
    return request_problem(placement_request(cluster), nodes)


def scale_up_plan(
    cluster: ClusterConfig,
    nodes: Sequence[Node],
    autoscaler: tuple[list[NodeType], int | None] | None,
) -> ScaleUp:
    """The nodes the autoscaler must add before the workers fit (none if `nodes` suffice).

    Args:
        cluster: the job's cluster section.
        nodes: the live nodes.
        autoscaler: its worker node types and cluster-wide worker limit; None: no autoscaler.

    Raises:
        PlacementError: no number of nodes the cluster has or may launch fits the workers.
    """
    request = placement_request(cluster)
    if autoscaler is None:
        problem = request_problem(request, nodes)
        if problem:
            raise PlacementError(problem)
        return ScaleUp({}, {})
    types, limit = autoscaler
    workers_up = sum(1 for node in nodes if not node.is_head)
    try:
        return scale_up(request, nodes, types, None if limit is None else limit - workers_up)
    except NeverFits as exc:
        raise PlacementError(str(exc)) from None


def describe_plan(plan: PlacementPlan) -> str:
    """`3 workers x 1 CPU + 1 slot (SPREAD)`, for messages."""
    wanted = describe_resources(plan.resources_per_worker)
    pinned = ", pinned to chosen nodes" if plan.label_selector else ""
    count = plan.worker_count()
    workers = f"{count[0]}-{count[1]}" if isinstance(count, tuple) else str(count)
    return f"{workers} workers x {wanted} ({plan.strategy}{pinned})"
