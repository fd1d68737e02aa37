"""What the connected cluster's autoscaler may launch: its node types, read through Ray.

Two sources, in this order:
1. The GCS's autoscaler cluster config (`ray._private.state.state.get_cluster_config()`, a
   `ray.rpc.autoscaler.ClusterConfig` with one `NodeGroupConfig` per node type: resources,
   max_count). It is Ray's own record of "what the autoscaler may launch" and Ray Data's
   autoscaler reads it, but in Ray 2.60 only autoscalers that report it fill it in.
2. Otherwise the config file the cluster's autoscaler (`monitor.py`, v1 or v2) reads, named by its
   `--autoscaling-config` argument on the head node: the cluster launcher's
   `~/ray_bootstrap_config.yaml`, or whatever `ray start --head --autoscaling-config` was given.
   A 0-CPU task pinned to the head finds that monitor (the one logging into this session's
   directory) and returns the file as text; it is parsed here as YAML data.

How many nodes of each type are up comes from the autoscaler's status record
(`__autoscaling_status`, what `ray status` prints). No autoscaler (none of these found): None,
and the fit check counts live nodes only, as before.
"""

from __future__ import annotations

import json
from typing import Any

from cluster.errors import ClusterError
from cluster.placement.scaling import NodeType, node_types_from_config

QUERY_TIMEOUT_S = 30.0
MAX_CONFIG_BYTES = 1 << 20
STATUS_KEY = "__autoscaling_status"  # ray._private.ray_constants.DEBUG_AUTOSCALING_STATUS


def autoscaler_node_types() -> tuple[list[NodeType], int | None] | None:
    """The worker node types the autoscaler may launch (with how many of each are up) and the
    cluster-wide worker limit; None when the cluster has no autoscaler.

    Raises:
        ClusterError: the head did not answer within QUERY_TIMEOUT_S, or the autoscaler's
            config cannot be read as one.
    """
    found = _from_gcs_cluster_config()
    if found is None:
        text = _autoscaler_config_text()
        if text is None:
            return None
        found = _parse_config(text)
    types, limit = found
    running = _running_by_type()
    return [_with_running(t, running.get(t.name, 0)) for t in types], limit


def _with_running(node_type: NodeType, running: int) -> NodeType:
    return NodeType(node_type.name, node_type.resources, node_type.max_workers, running)


def _from_gcs_cluster_config() -> tuple[list[NodeType], int | None] | None:
    from ray._private.state import state

    config = state.get_cluster_config()
    if config is None or not config.node_group_configs:
        return None
    types = [
        NodeType(
            group.name,
            {k: float(v) for k, v in group.resources.items()},
            None if group.max_count < 0 else int(group.max_count),
        )
        for group in config.node_group_configs
        if "node:__internal_head__" not in group.resources
    ]
    return types, None


def _parse_config(text: str) -> tuple[list[NodeType], int | None]:
    import yaml

    try:
        return node_types_from_config(yaml.safe_load(text) or {})
    except (yaml.YAMLError, ValueError, TypeError, AttributeError) as exc:
        raise ClusterError(
            f"cluster.address: the autoscaler's config cannot be read: {exc}"
        ) from None


def _autoscaler_config_text() -> str | None:
    import ray
    from ray.exceptions import GetTimeoutError
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    head = next(
        (
            n["NodeID"]
            for n in ray.nodes()
            if n.get("Alive") and "node:__internal_head__" in n["Resources"]
        ),
        None,
    )
    if head is None:
        return None
    task = ray.remote(num_cpus=0, max_retries=2)(read_autoscaler_config).options(
        scheduling_strategy=NodeAffinitySchedulingStrategy(head, soft=False)
    )
    ref = task.remote(MAX_CONFIG_BYTES)
    try:
        return ray.get(ref, timeout=QUERY_TIMEOUT_S)
    except GetTimeoutError:
        ray.cancel(ref, force=True)
        raise ClusterError(
            f"cluster.address: the head node did not say within {QUERY_TIMEOUT_S:g} s whether "
            "an autoscaler runs (is it overloaded?)"
        ) from None


def read_autoscaler_config(max_bytes: int) -> str | None:
    """On the head node: the text of the config file this session's autoscaler reads, or None if
    no autoscaler of this session runs here (or it has no config file)."""
    from pathlib import Path

    from ray._private import worker

    node = worker._global_node
    if node is None:
        return None
    logs_dir = f"--logs-dir={node.get_session_dir_path()}/logs"
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            args = (proc / "cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        if not any(
            a.endswith("autoscaler/_private/monitor.py") or a.endswith("autoscaler/v2/monitor.py")
            for a in args
        ):
            continue
        if logs_dir not in args:
            continue
        path = next(
            (a.split("=", 1)[1] for a in args if a.startswith("--autoscaling-config=")), None
        )
        if path is None:
            return None
        with open(path, encoding="utf-8") as f:
            return f.read(max_bytes)
    return None


def _running_by_type() -> dict[str, int]:
    """Alive nodes per node type, from the autoscaler's status record (empty if none yet)."""
    import ray
    from ray.experimental.internal_kv import _internal_kv_get

    raw = _internal_kv_get(STATUS_KEY)
    if not raw:
        return {}
    try:
        mapping: dict[str, Any] = json.loads(raw)["autoscaler_report"]["node_type_mapping"] or {}
    except (ValueError, KeyError, TypeError):
        return {}
    alive = {n["NodeID"] for n in ray.nodes() if n.get("Alive")}
    counts: dict[str, int] = {}
    for node_id, name in mapping.items():
        if node_id in alive:
            counts[str(name)] = counts.get(str(name), 0) + 1
    return counts
