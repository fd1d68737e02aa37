"""Placement without processes: config rules, the fit check per strategy, the Ray mapping."""

from __future__ import annotations

from collections import Counter

import pytest

from cluster.placement.fit import (
    Node,
    PlacementRequest,
    max_placeable_workers,
    placement_problem,
    request_problem,
    worker_counts,
)
from cluster.placement.plan import (
    PlacementError,
    PlacementPlan,
    placement_plan,
    worker_resources,
)
from launcher.config_loading import validate_job_dict
from launcher.errors import UserError
from trainer.config.schema import ClusterConfig


def job_dict(**cluster: object) -> dict:
    return {
        "model": {"path": "m"},
        "data": {"train": "a", "validation": "b", "test": "c"},
        "cluster": cluster,
    }


def errors_of(**cluster: object) -> list[str]:
    with pytest.raises(UserError) as info:
        validate_job_dict(job_dict(**cluster))
    return info.value.messages


def three_gpu_nodes() -> list[Node]:
    return [
        Node("head", {"CPU": 2.0, "GPU": 1.0, "memory": 8e9, "slot": 2.0}, is_head=True),
        Node("n1", {"CPU": 2.0, "GPU": 1.0, "memory": 8e9, "slot": 2.0}),
        Node("n2", {"CPU": 2.0, "GPU": 1.0, "memory": 8e9, "slot": 2.0}),
    ]


def test_defaults_keep_the_old_behaviour() -> None:
    c = ClusterConfig()
    assert (c.placement, c.num_nodes, c.memory_per_worker, c.custom_resources) == (
        "pack",
        None,
        None,
        {},
    )
    plan = placement_plan(c, three_gpu_nodes())
    assert plan.scaling_kwargs() == {
        "num_workers": 2,
        "use_gpu": False,
        "resources_per_worker": {"CPU": 1.0},
        "placement_strategy": "PACK",
    }


def test_memory_accepts_sizes_and_custom_resources_map_to_ray_names() -> None:
    job = validate_job_dict(
        job_dict(
            memory_per_worker="4GB",
            gpus_per_worker=0.5,
            custom_resources={"accelerator_type:A100": 0.01, "TPU": 1},
        )
    )
    assert job.cluster.memory_per_worker == 4_000_000_000
    assert worker_resources(job.cluster) == {
        "CPU": 1.0,
        "GPU": 0.5,
        "memory": 4e9,
        "accelerator_type:A100": 0.01,
        "TPU": 1.0,
    }
    assert validate_job_dict(job_dict(memory_per_worker="512MiB")).cluster.memory_per_worker == (
        512 << 20
    )
    assert validate_job_dict(job_dict(memory_per_worker=1000)).cluster.memory_per_worker == 1000


@pytest.mark.parametrize(
    ("cluster", "expected"),
    [
        ({"placement": "diagonal"}, "cluster.placement: must be one of 'pack', 'spread'"),
        ({"num_nodes": 0}, "cluster.num_nodes: must be > 0 (got 0)"),
        (
            {"memory_per_worker": "4 gigs"},
            "cluster.memory_per_worker: could not interpret byte unit: gigs",
        ),
        ({"memory_per_worker": 0}, "cluster.memory_per_worker: must be > 0"),
        ({"custom_resources": {"slot": 0}}, "cluster.custom_resources.slot: must be > 0"),
        ({"custom_resources": {"gpu": 1}}, "cluster.custom_resources.gpu: request GPU with"),
        ({"placement_timeout_s": 0}, "cluster.placement_timeout_s: must be > 0"),
        ({"gpus_per_worker": 1.5}, "cluster.gpus_per_worker: one worker is one process driving"),
        (
            {"gpus_per_worker": 8},
            "cluster.gpus_per_worker: one worker is one process driving one GPU (got 8, which "
            "would leave all but one idle); for G GPUs per node use gpus_per_worker: 1 and "
            "cluster.num_workers: G x nodes",
        ),
        (
            {"placement": "strict_spread", "num_workers": 4, "num_nodes": 2},
            "cluster.num_nodes: strict_spread puts every worker on its own node, so num_nodes "
            "must equal cluster.num_workers (4)",
        ),
        (
            {"placement": "spread", "num_workers": 2, "num_nodes": 3},
            "cluster.num_nodes: spreading 2 worker(s) over exactly 3 nodes",
        ),
    ],
)
def test_bad_placement_settings_are_one_line_naming_the_field(cluster: dict, expected: str) -> None:
    (message,) = errors_of(**cluster)
    assert message.startswith(expected), message


def test_impossible_gpu_request_says_what_is_missing() -> None:
    cluster = ClusterConfig(num_workers=4, gpus_per_worker=1, placement="spread", num_nodes=2)
    with pytest.raises(PlacementError) as info:
        placement_plan(cluster, three_gpu_nodes())
    assert str(info.value) == (
        "cluster.num_nodes: needs 4 workers x 1 CPU + 1 GPU on 2 node(s) (2/2); the cluster has "
        "3 node(s) with 6 CPU, 3 GPU, and its 2 largest node(s) hold 1, 1 worker(s)"
    )
    # Without num_nodes the GPU total is what is short.
    problem = request_problem(
        PlacementRequest(4, {"CPU": 1.0, "GPU": 1.0}, "spread"), three_gpu_nodes()
    )
    assert problem == (
        "cluster.num_workers: needs 4 workers x 1 CPU + 1 GPU; the cluster has 3 node(s) with "
        "6 CPU, 3 GPU in total and can place at most 3"
    )


def test_a_resource_no_node_has_is_named() -> None:
    problem = request_problem(PlacementRequest(1, {"CPU": 1.0, "TPU": 1.0}), three_gpu_nodes())
    assert problem is not None and "x 1 CPU + 1 TPU" in problem and "0 TPU" in problem


def test_memory_is_checked_per_node_and_shown_in_gb() -> None:
    problem = request_problem(
        PlacementRequest(2, {"CPU": 1.0, "memory": 5e9}), three_gpu_nodes()[:1]
    )
    assert problem == (
        "cluster.num_workers: needs 2 workers x 1 CPU + 5 GB memory; the cluster has 1 node(s) "
        "with 2 CPU, 8 GB memory in total and can place at most 1"
    )


def test_strict_spread_needs_one_node_per_worker() -> None:
    nodes = three_gpu_nodes()
    assert request_problem(PlacementRequest(3, {"CPU": 1.0}, "strict_spread"), nodes) is None
    problem = request_problem(PlacementRequest(4, {"CPU": 1.0}, "strict_spread"), nodes)
    assert problem == (
        "cluster.placement: strict_spread puts each of 4 workers x 1 CPU on its own node; the "
        "cluster has 3 node(s) with 6 CPU, and only 3 node(s) can hold one"
    )
    # Plenty of CPUs in total do not help when they are all on one node.
    big = [Node("big", {"CPU": 64.0}), Node("tiny", {"CPU": 0.5})]
    assert request_problem(PlacementRequest(2, {"CPU": 1.0}, "pack"), big) is None
    assert "only 1 node(s)" in request_problem(
        PlacementRequest(2, {"CPU": 1.0}, "strict_spread"), big
    )


def test_spread_over_num_nodes_pins_balanced_counts_head_first() -> None:
    cluster = ClusterConfig(
        num_workers=3, placement="spread", num_nodes=2, custom_resources={"slot": 1}
    )
    plan = placement_plan(cluster, three_gpu_nodes())
    assert plan.strategy == "SPREAD"
    pinned = [s["ray.io/node-id"] for s in plan.label_selector]
    assert Counter(pinned) == {"head": 2, "n1": 1}
    assert worker_counts(7, 3) == [3, 2, 2]


def test_spread_over_num_nodes_picks_nodes_that_can_hold_their_share() -> None:
    nodes = [
        Node("head", {"CPU": 1.0}, is_head=True),
        Node("a", {"CPU": 2.0}),
        Node("b", {"CPU": 2.0}),
    ]
    cluster = ClusterConfig(num_workers=4, placement="spread", num_nodes=2)
    pinned = [s["ray.io/node-id"] for s in placement_plan(cluster, nodes).label_selector]
    assert Counter(pinned) == {"a": 2, "b": 2}
    with pytest.raises(PlacementError, match=r"on 2 node\(s\) \(3/2\)"):
        placement_plan(ClusterConfig(num_workers=5, placement="spread", num_nodes=2), nodes)


def test_pack_on_num_nodes_limits_the_node_set() -> None:
    cluster = ClusterConfig(
        num_workers=3, placement="pack", num_nodes=2, custom_resources={"slot": 1}
    )
    plan = placement_plan(cluster, three_gpu_nodes())
    assert plan.strategy == "PACK"
    assert plan.label_selector == [{"ray.io/node-id": "in(head,n1)"}] * 3
    with pytest.raises(PlacementError, match="at most 1 nodes"):
        placement_plan(cluster.model_copy(update={"num_nodes": 1}), three_gpu_nodes())


def test_strict_spread_maps_to_ray_without_pins() -> None:
    cluster = ClusterConfig(
        num_workers=3, placement="strict_spread", num_nodes=3, gpus_per_worker=1
    )
    kwargs = placement_plan(cluster, three_gpu_nodes()).scaling_kwargs()
    assert kwargs["placement_strategy"] == "STRICT_SPREAD" and "label_selector" not in kwargs
    assert kwargs["use_gpu"] and kwargs["resources_per_worker"] == {"CPU": 1.0, "GPU": 1.0}


def test_gpu_workers_gather_cpu_tensors_over_gloo_and_cuda_ones_over_nccl() -> None:
    from torch.distributed.distributed_c10d import Backend, BackendConfig

    def device_backends(plan: PlacementPlan) -> dict[str, str]:
        return BackendConfig(Backend(plan.process_group_backend())).get_device_backend_map()

    gpu = placement_plan(ClusterConfig(num_workers=3, gpus_per_worker=1), three_gpu_nodes())
    assert device_backends(gpu) == {"cpu": "gloo", "cuda": "nccl"}
    cpu = placement_plan(ClusterConfig(num_workers=2), [Node("head", {"CPU": 4.0}, is_head=True)])
    assert device_backends(cpu)["cpu"] == "gloo" and cpu.process_group_backend() == "gloo"


def test_workers_fit_per_node_not_just_in_total() -> None:
    nodes = [{"CPU": 3.0}, {"CPU": 3.0}]
    assert max_placeable_workers({"CPU": 2.0}, nodes) == 2  # 6 CPUs in total, but 1 worker per node
    assert placement_problem(2, {"CPU": 2.0}, nodes) is None
    problem = placement_problem(3, {"CPU": 2.0}, nodes)
    assert problem == (
        "cluster.num_workers: needs 3 workers x 2 CPU; the cluster has 2 node(s) with 6 CPU in total "
        "and can place at most 2"
    )


def test_gpu_requests_count_gpus() -> None:
    nodes = [{"CPU": 16.0, "GPU": 1.0}, {"CPU": 16.0}]
    problem = placement_problem(4, {"CPU": 1.0, "GPU": 1.0}, nodes)
    assert (
        problem is not None
        and "needs 4 workers x 1 CPU + 1 GPU" in problem
        and "1 GPU in total" in problem
    )


def test_zero_resources_are_ignored_and_fractions_work() -> None:
    assert max_placeable_workers({"CPU": 0.5, "GPU": 0.0}, [{"CPU": 2.0}]) == 4
