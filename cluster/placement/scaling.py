"""Which nodes an autoscaler must add before the workers fit, or why it never can (pure).

An autoscaling cluster may have no node of the kind the job needs yet: its node types (the
resources of one node and how many the autoscaler may launch) say what it *could* have. The
plan adds, one node at a time, the type that holds the most workers until `request_problem`
(cluster/placement/fit.py) accepts live + added nodes; the counts per type are what the launcher
waits for ("waiting for 2 x {CPU: 1, slot: 1} nodes from the autoscaler: 1 of 2 up"). The
autoscaler itself is driven by the pending reservation (cluster/placement/reserve.py), as it is
for any Ray placement group; this only decides whether waiting can ever succeed, and for what.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from cluster.placement.fit import Node, PlacementRequest, node_capacity, request_problem

# Ray resource name -> the job field that asks for it (anything else is a custom resource).
RESOURCE_FIELDS = {
    "CPU": "cluster.cpus_per_worker",
    "GPU": "cluster.gpus_per_worker",
    "memory": "cluster.memory_per_worker",
}


class NeverFits(Exception):
    """No number of nodes the autoscaler may launch makes the request fit; says what is missing."""


@dataclass(frozen=True)
class NodeType:
    """A node type the autoscaler may launch: one node's resources and its launch limit."""

    name: str
    resources: Mapping[str, float]
    max_workers: int | None = None  # None: no limit of its own (the cluster's max_workers holds)
    running: int = 0  # nodes of this type alive now, counted against max_workers

    def headroom(self) -> int | None:
        return None if self.max_workers is None else max(0, self.max_workers - self.running)


@dataclass(frozen=True)
class ScaleUp:
    """Nodes to wait for, by type; empty when the live nodes already suffice."""

    counts: Mapping[str, int]
    resources: Mapping[str, Mapping[str, float]]

    def total(self) -> int:
        return sum(self.counts.values())

    def describe(self) -> str:
        """`2 x {CPU: 1, slot: 1}` (types joined by `, `)."""
        return ", ".join(
            f"{count} x {describe_node(self.resources[name])}"
            for name, count in self.counts.items()
        )


def describe_node(resources: Mapping[str, float]) -> str:
    """`{CPU: 1, slot: 1}`: what one node has (Ray's bookkeeping resources left out)."""
    shown = {k: v for k, v in sorted(resources.items()) if _is_user_resource(k) and v > 0}
    parts = [f"{k}: {v / 1e9:.3g} GB" if k == "memory" else f"{k}: {v:g}" for k, v in shown.items()]
    return "{" + ", ".join(parts) + "}"


def user_resources(resources: Mapping[str, float]) -> dict[str, float]:
    """A node's resources as an autoscaler request: what jobs ask for, without Ray's per-node
    markers, the object store and memory (which node types often leave to the machine)."""
    return {k: v for k, v in resources.items() if _is_user_resource(k) and k != "memory" and v > 0}


def _is_user_resource(name: str) -> bool:
    return not name.startswith("node:") and name != "object_store_memory"


def scale_up(
    request: PlacementRequest,
    live: Sequence[Node],
    types: Sequence[NodeType],
    max_new_nodes: int | None = None,
) -> ScaleUp:
    """The fewest nodes (largest first) the autoscaler must add for `request` to fit.

    Args:
        request: what the job asks for.
        live: the nodes up now (total resources).
        types: the worker node types the autoscaler may launch.
        max_new_nodes: the cluster-wide limit on further worker nodes (None: only per type).

    Raises:
        NeverFits: no node type can hold one worker, or the limits stop short of the request.
    """
    if request_problem(request, live) is None:
        return ScaleUp({}, {})
    usable = [t for t in types if node_capacity(request.per_worker, t.resources) > 0]
    if not usable:
        raise NeverFits(one_worker_problem(request, types))
    usable.sort(key=lambda t: (-node_capacity(request.per_worker, t.resources), t.name))
    left = {t.name: t.headroom() for t in usable}
    budget = max_new_nodes
    added: list[NodeType] = []
    # Each added node holds at least one worker, so this many always suffice if any number does.
    for _ in range(request.num_workers + (request.num_nodes or 0)):
        pick = next((t for t in usable if left[t.name] != 0), None)
        if pick is None or budget == 0:
            break
        added.append(pick)
        left[pick.name] = None if left[pick.name] is None else left[pick.name] - 1  # type: ignore[operator]
        budget = None if budget is None else budget - 1
        if request_problem(request, [*live, *_as_nodes(added)]) is None:
            counts = Counter(t.name for t in added)
            return ScaleUp(dict(counts), {t.name: dict(t.resources) for t in added})
    problem = request_problem(request, [*live, *_as_nodes(added)]) or "does not fit"
    limits = ", ".join(f"{t.name} {_limit(t)}" for t in usable)
    raise NeverFits(
        f"{problem}, counting the {len(added)} node(s) the autoscaler may add ({limits})"
    )


def _limit(node_type: NodeType) -> str:
    held = describe_node(node_type.resources)
    if node_type.max_workers is None:
        return f"{held}, no limit of its own"
    return f"{held}, {node_type.running} of max_workers {node_type.max_workers} up"


def _as_nodes(types: Sequence[NodeType]) -> list[Node]:
    return [Node(f"{t.name}#{i}", t.resources) for i, t in enumerate(types)]


def one_worker_problem(request: PlacementRequest, types: Sequence[NodeType]) -> str:
    """One line naming the field that asks for more than any node type has, and the biggest type.

    The biggest type is the one closest to holding a worker (largest smallest share of what one
    worker wants); the field is the resource it is shortest of.
    """
    wanted = request.wanted
    if not types:
        return (
            f"cluster.num_workers: one worker x {_wants(request)} fits no live node, and the "
            "autoscaler has no worker node types it may launch"
        )

    def shares(t: NodeType) -> dict[str, float]:
        return {k: t.resources.get(k, 0.0) / v for k, v in wanted.items()}

    biggest = max(types, key=lambda t: (min(shares(t).values()), t.name))
    short = min(shares(biggest).items(), key=lambda kv: kv[1])[0]
    field = RESOURCE_FIELDS.get(short, f"cluster.custom_resources.{short}")
    return (
        f"{field}: one worker x {_wants(request)} fits no node the autoscaler may launch; "
        f"the biggest node type is {biggest.name} with {describe_node(biggest.resources)}"
    )


def _wants(request: PlacementRequest) -> str:
    return describe_node(request.wanted)


def nodes_up(plan: ScaleUp, before: set[str], now: Sequence[Node]) -> int:
    """How many of the planned nodes are up: live nodes not there `before` that have a planned
    type's resources (at most the planned count)."""
    new = [node for node in now if node.node_id not in before]
    kinds = list(plan.resources.values())
    fits = sum(1 for node in new if any(_covers(node.resources, kind) for kind in kinds))
    return min(fits, plan.total())


def _covers(have: Mapping[str, float], kind: Mapping[str, float]) -> bool:
    return all(
        have.get(k, 0.0) + 1e-9 >= v
        for k, v in kind.items()
        if _is_user_resource(k) and k != "memory"
    )


def node_types_from_config(config: Mapping[str, object]) -> tuple[list[NodeType], int | None]:
    """Worker node types and the cluster-wide `max_workers` from an autoscaler config
    (Ray's cluster-launcher YAML: `available_node_types`, `head_node_type`, `max_workers`).

    Raises:
        ValueError: the config does not have that shape.
    """
    types = config.get("available_node_types")
    if not isinstance(types, dict):
        raise ValueError("autoscaler config has no available_node_types mapping")
    head = config.get("head_node_type")
    found = []
    for name, spec in types.items():
        if name == head or not isinstance(spec, dict):
            continue
        resources = spec.get("resources") or {}
        limit = spec.get("max_workers")
        found.append(
            NodeType(
                str(name),
                {str(k): float(v) for k, v in dict(resources).items()},
                int(limit) if isinstance(limit, int) else None,
            )
        )
    total = config.get("max_workers")
    return found, int(total) if isinstance(total, int) else None
