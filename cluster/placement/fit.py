"""Will the requested workers ever fit on this cluster, and on which nodes? Pure functions, so we
fail fast with a message that says what is missing instead of waiting forever.

Capacities are computed from each node's *total* resources: work already running may finish, so
being busy now is not a reason to refuse (`cluster.placement_timeout_s` bounds that wait). Each
worker is one placement-group bundle and a bundle never spans nodes, so the check is per node, not
on cluster totals. Ray Train 2.x (v2) runs its controller as a 0-CPU actor on the driver's node
and ftlaunch's collector and shard server are 0-CPU actors there too: there is no trainer bundle
to reserve, and `strict_spread` needs exactly `num_workers` nodes, not one more.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

STRATEGIES = ("pack", "spread", "strict_spread")


@dataclass(frozen=True)
class Node:
    node_id: str
    resources: Mapping[str, float]
    is_head: bool = False


@dataclass(frozen=True)
class PlacementRequest:
    """What the job asks for, in Ray's resource names (CPU, GPU, memory in bytes, custom)."""

    num_workers: int
    per_worker: Mapping[str, float]
    strategy: str = "pack"
    num_nodes: int | None = None
    wanted: dict[str, float] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ValueError(f"unknown placement strategy {self.strategy!r}")
        object.__setattr__(self, "wanted", {k: v for k, v in self.per_worker.items() if v > 0})


def node_capacity(per_worker: Mapping[str, float], resources: Mapping[str, float]) -> int:
    """How many workers of `per_worker` fit on one node with `resources` in total."""
    needed = {k: v for k, v in per_worker.items() if v > 0}
    fits = [math.floor(resources.get(name, 0.0) / amount + 1e-9) for name, amount in needed.items()]
    return min(fits) if fits else 0


def max_placeable_workers(per_worker: Mapping[str, float], nodes: list[Mapping[str, float]]) -> int:
    """How many workers of `per_worker` resources fit on these nodes (each worker on one node)."""
    return sum(node_capacity(per_worker, node) for node in nodes)


def placement_problem(
    num_workers: int, per_worker: Mapping[str, float], nodes: list[Mapping[str, float]]
) -> str | None:
    """None if `num_workers` fit anywhere (pack/spread); otherwise one line saying what is missing."""
    request = PlacementRequest(num_workers, per_worker)
    return request_problem(request, [Node(str(i), n) for i, n in enumerate(nodes)])


def request_problem(request: PlacementRequest, nodes: Sequence[Node]) -> str | None:
    """None if the request can be placed on `nodes` once they are free; else one line naming the
    field to change and what the cluster lacks (missing resources, too few or too small nodes)."""
    w, n = request.num_workers, request.num_nodes
    caps = sorted(
        (node_capacity(request.per_worker, node.resources) for node in nodes), reverse=True
    )
    usable = sum(1 for c in caps if c > 0)
    if request.strategy == "strict_spread" and usable < w:
        return (
            f"cluster.placement: strict_spread puts each of {w} workers x {describe_resources(request.wanted)} "
            f"on its own node; {_have(request, nodes)}, and only {usable} node(s) can hold one"
        )
    if n is not None and request.strategy != "strict_spread":
        counts = worker_counts(w, n) if request.strategy == "spread" else None
        fits = (
            len(caps) >= n and all(c >= k for c, k in zip(caps, counts, strict=False))
            if counts
            else sum(caps[:n]) >= w
        )
        if not fits:
            layout = "/".join(map(str, counts)) if counts else f"at most {n} nodes"
            largest = ", ".join(map(str, caps[:n])) or "none"
            return (
                f"cluster.num_nodes: needs {w} workers x {describe_resources(request.wanted)} on {n} "
                f"node(s) ({layout}); {_have(request, nodes)}, and its {n} largest node(s) "
                f"hold {largest} worker(s)"
            )
        return None
    if sum(caps) < w:
        return (
            f"cluster.num_workers: needs {w} workers x {describe_resources(request.wanted)}; "
            f"{_have(request, nodes)} in total and can place at most {sum(caps)}"
        )
    return None


def worker_counts(num_workers: int, num_nodes: int) -> list[int]:
    """Workers per node when `num_workers` are spread evenly over `num_nodes`, largest first."""
    base, extra = divmod(num_workers, num_nodes)
    return [base + 1] * extra + [base] * (num_nodes - extra)


def choose_nodes(request: PlacementRequest, nodes: Sequence[Node]) -> list[Node]:
    """The `num_nodes` nodes to use: largest capacity first, the head node first among equals
    (its ranks write checkpoints straight to the run directory), then by id (deterministic)."""
    assert request.num_nodes is not None
    ranked = sorted(
        nodes,
        key=lambda node: (
            -node_capacity(request.per_worker, node.resources),
            not node.is_head,
            node.node_id,
        ),
    )
    return ranked[: request.num_nodes]


def assign_workers(request: PlacementRequest, nodes: Sequence[Node]) -> list[str]:
    """Node id for each worker when spreading over exactly `num_nodes` nodes (balanced); the
    request must have passed `request_problem`."""
    chosen = choose_nodes(request, nodes)
    counts = worker_counts(request.num_workers, len(chosen))
    return [node.node_id for node, count in zip(chosen, counts, strict=True) for _ in range(count)]


def _have(request: PlacementRequest, nodes: Sequence[Node]) -> str:
    totals = {k: sum(node.resources.get(k, 0.0) for node in nodes) for k in request.wanted}
    listed = ", ".join(amount(k, v) for k, v in totals.items())
    return f"the cluster has {len(nodes)} node(s) with {listed}"


def describe_resources(per_worker: Mapping[str, float]) -> str:
    """`1 CPU + 0.5 GPU + 4 GB memory`: the nonzero amounts, for messages."""
    return " + ".join(amount(k, v) for k, v in per_worker.items() if v > 0)


def amount(name: str, value: float) -> str:
    """`2 CPU`, `4 GB memory` (Ray counts memory in bytes)."""
    if name == "memory":
        return f"{value / 1e9:.3g} GB memory"
    return f"{_fmt(value)} {name}"


def _fmt(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"
