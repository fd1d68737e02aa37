"""The shell around the pure plan: read the live nodes of the connected Ray cluster, and reserve
the workers' bundles once with a deadline (Ray Train itself would wait forever)."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from typing import Any

from cluster.placement.fit import Node, amount
from cluster.placement.plan import PlacementError, PlacementPlan, describe_plan
from cluster.placement.scaling import ScaleUp, nodes_up, user_resources

POLL_S = 1.0


def live_nodes() -> list[Node]:
    """The alive nodes of the connected Ray cluster, with their total resources."""
    import ray

    head = ray.get_runtime_context().get_node_id()
    return [
        Node(n["NodeID"], dict(n["Resources"]), is_head=n["NodeID"] == head)
        for n in ray.nodes()
        if n.get("Alive")
    ]


def reserve_or_fail(plan: PlacementPlan, timeout_s: float) -> float:
    """Reserve the workers' bundles once, as Ray Train will, and release them; returns seconds
    waited. A busy or autoscaling cluster gets `timeout_s` to make room.

    Ray Train (v2) itself retries an unplaceable worker group forever, so this is where the wait is
    bounded. The reservation is removed whatever happens, so a timeout leaves nothing behind; Ray
    Train then reserves the same bundles right away (another job could take them in between, in
    which case Ray Train waits for them as usual).

    Raises:
        PlacementError: not placed within `timeout_s` (cluster.placement_timeout_s).
    """
    import ray
    from ray.util.placement_group import placement_group, remove_placement_group

    started = time.monotonic()
    selectors: dict[str, Any] = (
        {"bundle_label_selector": plan.label_selector} if plan.label_selector else {}
    )
    group = placement_group(
        plan.bundles(),
        strategy=plan.strategy,
        name=f"ftlaunch-probe-{socket.gethostname()}-{time.time_ns()}",
        **selectors,
    )
    try:
        ready = group.wait(timeout_seconds=timeout_s)
    finally:
        remove_placement_group(group)
    waited = time.monotonic() - started
    if not ready:
        free = ray.available_resources()
        have = ", ".join(amount(k, free.get(k, 0.0)) for k in plan.resources_per_worker)
        raise PlacementError(
            f"cluster.placement_timeout_s: {describe_plan(plan)} were not placed within "
            f"{timeout_s:g} s; the cluster has {have} free now (other jobs may hold the rest)"
        )
    return waited


def wait_for_nodes(plan: ScaleUp, timeout_s: float, say: Callable[[str], None]) -> float:
    """Ask the autoscaler for the planned nodes (Ray's public `request_resources`: the live
    nodes' own shapes plus one bundle per planned node, so exactly those are added) and wait
    until they are up, saying so each time the count changes; returns seconds waited.

    The request is withdrawn afterwards whatever happens: the reservation that follows keeps the
    nodes busy, and idle ones may then be scaled down as usual.

    Raises:
        PlacementError: they were not all up within `timeout_s` (cluster.placement_timeout_s).
    """
    from ray.autoscaler.sdk import request_resources

    started = time.monotonic()
    before = live_nodes()
    known = {node.node_id for node in before}
    wanted = [user_resources(node.resources) for node in before]
    for name, count in plan.counts.items():
        wanted += [user_resources(plan.resources[name])] * count
    request_resources(bundles=wanted)
    try:
        up = _wait_up(plan, known, started + timeout_s, say)
    finally:
        request_resources(bundles=[])
    if up < plan.total():
        raise PlacementError(
            f"cluster.placement_timeout_s: waited {timeout_s:g} s for {plan.describe()} nodes "
            f"from the autoscaler and only {up} of {plan.total()} came up; the rest were not "
            "launched (quota, capacity or launch failures: see `ray status` on the head)"
        )
    return time.monotonic() - started


def _wait_up(plan: ScaleUp, known: set[str], deadline: float, say: Callable[[str], None]) -> int:
    last = -1
    while True:
        up = nodes_up(plan, known, live_nodes())
        if up != last:
            say(
                f"waiting for {plan.describe()} nodes from the autoscaler: {up} of {plan.total()} up"
            )
            last = up
        if up >= plan.total() or time.monotonic() >= deadline:
            return up
        time.sleep(POLL_S)
