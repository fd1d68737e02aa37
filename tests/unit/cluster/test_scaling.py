"""The pure autoscaling part of the fit check: which nodes to wait for, or why none ever fit."""

from __future__ import annotations

import pytest

from cluster.placement.fit import Node, PlacementRequest
from cluster.placement.plan import PlacementError, scale_up_plan
from cluster.placement.scaling import (
    NeverFits,
    NodeType,
    ScaleUp,
    node_types_from_config,
    nodes_up,
    scale_up,
    user_resources,
)
from trainer.config.cluster import ClusterConfig

HEAD = Node("head", {"CPU": 1.0, "node:__internal_head__": 1.0, "memory": 8e9}, is_head=True)
SLOT = NodeType("ray.worker.slot", {"CPU": 1.0, "slot": 1.0}, max_workers=2)
GPU8 = NodeType("gpu8", {"CPU": 32.0, "GPU": 8.0}, max_workers=4)
GPU1 = NodeType("gpu1", {"CPU": 8.0, "GPU": 1.0}, max_workers=10)


def slot_request(workers: int = 2, **kwargs: object) -> PlacementRequest:
    return PlacementRequest(workers, {"CPU": 1.0, "slot": 1.0}, **kwargs)  # type: ignore[arg-type]


def test_live_nodes_that_suffice_need_no_scaling() -> None:
    live = [HEAD, Node("w1", {"CPU": 2.0, "slot": 2.0})]
    assert scale_up(slot_request(), live, [SLOT]).total() == 0


def test_zero_nodes_of_a_type_scale_up_to_one_node_per_worker() -> None:
    plan = scale_up(slot_request(), [HEAD], [SLOT])
    assert plan.counts == {"ray.worker.slot": 2}
    assert plan.describe() == "2 x {CPU: 1, slot: 1}"


def test_the_biggest_type_is_preferred_and_only_as_many_as_needed() -> None:
    request = PlacementRequest(8, {"CPU": 4.0, "GPU": 1.0})
    assert scale_up(request, [HEAD], [GPU1, GPU8]).counts == {"gpu8": 1}
    request = PlacementRequest(12, {"CPU": 4.0, "GPU": 1.0})
    assert scale_up(request, [HEAD], [GPU1, GPU8]).counts == {"gpu8": 2}


def test_live_nodes_count_towards_the_request() -> None:
    live = [HEAD, Node("w1", {"CPU": 1.0, "slot": 1.0})]
    assert scale_up(slot_request(), live, [SLOT]).counts == {"ray.worker.slot": 1}


def test_a_type_exhausted_by_max_workers_falls_back_to_the_next() -> None:
    small = NodeType("small", {"CPU": 1.0, "slot": 1.0}, max_workers=5)
    big = NodeType("big", {"CPU": 2.0, "slot": 2.0}, max_workers=1)
    assert scale_up(slot_request(4), [HEAD], [small, big]).counts == {"big": 1, "small": 2}


def test_num_nodes_spread_counts_nodes_not_yet_up() -> None:
    big = NodeType("big", {"CPU": 4.0, "slot": 4.0}, max_workers=3)
    plan = scale_up(slot_request(4, strategy="spread", num_nodes=2), [HEAD], [big])
    assert plan.counts == {"big": 2}  # one node would hold all 4, but 2 nodes were asked for


def test_strict_spread_needs_one_new_node_per_worker() -> None:
    big = NodeType("big", {"CPU": 4.0, "slot": 4.0}, max_workers=3)
    plan = scale_up(slot_request(3, strategy="strict_spread", num_nodes=3), [HEAD], [big])
    assert plan.counts == {"big": 3}


def test_no_type_holds_one_worker_names_the_field_and_the_biggest_type() -> None:
    with pytest.raises(NeverFits) as info:
        scale_up(PlacementRequest(2, {"CPU": 1.0, "slot": 3.0}), [HEAD], [SLOT])
    assert str(info.value) == (
        "cluster.custom_resources.slot: one worker x {CPU: 1, slot: 3} fits no node the "
        "autoscaler may launch; the biggest node type is ray.worker.slot with {CPU: 1, slot: 1}"
    )
    with pytest.raises(NeverFits, match=r"^cluster.gpus_per_worker: .* biggest node type is gpu8"):
        scale_up(PlacementRequest(1, {"CPU": 1.0, "GPU": 16.0}), [HEAD], [GPU1, GPU8])
    with pytest.raises(NeverFits, match=r"^cluster.cpus_per_worker: "):
        scale_up(PlacementRequest(1, {"CPU": 64.0, "GPU": 1.0}), [HEAD], [GPU1, GPU8])


def test_too_few_nodes_even_at_max_workers_says_what_the_limits_are() -> None:
    with pytest.raises(NeverFits) as info:
        scale_up(slot_request(3), [HEAD], [SLOT])
    message = str(info.value)
    assert message.startswith("cluster.num_workers: needs 3 workers x 1 CPU + 1 slot;")
    assert "can place at most 2" in message
    assert "ray.worker.slot {CPU: 1, slot: 1}, 0 of max_workers 2 up" in message


def test_nodes_already_running_use_up_max_workers() -> None:
    running = NodeType(SLOT.name, SLOT.resources, max_workers=2, running=2)
    live = [HEAD, Node("a", {"CPU": 1.0, "slot": 1.0}), Node("b", {"CPU": 1.0, "slot": 1.0})]
    with pytest.raises(NeverFits, match="2 of max_workers 2 up"):
        scale_up(slot_request(3), live, [running])


def test_the_cluster_wide_limit_caps_new_nodes() -> None:
    unlimited = NodeType("any", {"CPU": 1.0, "slot": 1.0})
    assert scale_up(slot_request(3), [HEAD], [unlimited]).counts == {"any": 3}
    with pytest.raises(NeverFits):
        scale_up(slot_request(3), [HEAD], [unlimited], max_new_nodes=2)


def test_nodes_up_counts_new_nodes_of_the_planned_shape_only() -> None:
    plan = ScaleUp({"ray.worker.slot": 2}, {"ray.worker.slot": {"CPU": 1.0, "slot": 1.0}})
    now = [
        HEAD,
        Node("other", {"CPU": 4.0}),  # came up, but is not what we wait for
        Node("n1", {"CPU": 1.0, "slot": 1.0, "memory": 1e9, "node:1.2.3.4": 1.0}),
    ]
    assert nodes_up(plan, {"head"}, now) == 1
    assert nodes_up(plan, {"head", "n1"}, now) == 0  # there before: not one of ours
    now.append(Node("n2", {"CPU": 1.0, "slot": 1.0}))
    now.append(Node("n3", {"CPU": 1.0, "slot": 1.0}))
    assert nodes_up(plan, {"head"}, now) == 2


def test_node_types_from_a_cluster_launcher_config() -> None:
    config = {
        "max_workers": 3,
        "head_node_type": "head",
        "available_node_types": {
            "head": {"resources": {"CPU": 4}, "max_workers": 0},
            "slot": {"resources": {"CPU": 1, "slot": 1}, "min_workers": 0, "max_workers": 2},
            "open": {"resources": {"CPU": 2}},
        },
    }
    types, limit = node_types_from_config(config)
    assert limit == 3
    assert types == [
        NodeType("slot", {"CPU": 1.0, "slot": 1.0}, 2),
        NodeType("open", {"CPU": 2.0}, None),
    ]
    with pytest.raises(ValueError, match="available_node_types"):
        node_types_from_config({"provider": {}})


def test_user_resources_drop_ray_bookkeeping() -> None:
    assert user_resources(HEAD.resources) == {"CPU": 1.0}


def test_scale_up_plan_without_an_autoscaler_keeps_the_live_node_message() -> None:
    cluster = ClusterConfig(num_workers=2, custom_resources={"slot": 1})
    with pytest.raises(PlacementError, match="can place at most 0"):
        scale_up_plan(cluster, [HEAD], None)
    assert scale_up_plan(cluster, [HEAD], ([SLOT], 8)).counts == {"ray.worker.slot": 2}
    assert scale_up_plan(cluster, [HEAD], ([SLOT], 2)).total() == 2  # the head is no worker
    with pytest.raises(PlacementError, match="counting the 0 node"):  # w uses the only one
        scale_up_plan(cluster, [HEAD, Node("w", {"CPU": 8.0})], ([SLOT], 1))
