"""Rules for the placement fields of `cluster` that need more than one field to check.

Kept out of schema.py so the schema stays a list of fields; `ClusterConfig` calls this from a
model validator, so a bad combination is a config error (exit 2) before anything starts.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from trainer.config.schema import ClusterConfig

# Requested through their own fields, so a typo like {"gpu": 1} is not silently a new resource.
DEDICATED_RESOURCES = {
    "CPU": "cluster.cpus_per_worker",
    "GPU": "cluster.gpus_per_worker",
    "memory": "cluster.memory_per_worker",
}


def placement_config_problems(cluster: ClusterConfig) -> list[str]:
    """Every inconsistency between placement fields, one line each naming the field."""
    problems = []
    workers, nodes = cluster.num_workers, cluster.num_nodes
    if cluster.placement == "strict_spread" and nodes is not None and nodes != workers:
        problems.append(
            f"cluster.num_nodes: strict_spread puts every worker on its own node, so num_nodes "
            f"must equal cluster.num_workers ({workers}) or be left out (got {nodes})"
        )
    elif cluster.placement == "spread" and nodes is not None and nodes > workers:
        problems.append(
            f"cluster.num_nodes: spreading {workers} worker(s) over exactly {nodes} nodes leaves "
            f"a node without a worker; use at most cluster.num_workers ({workers})"
        )
    if cluster.gpus_per_worker > 1 and not float(cluster.gpus_per_worker).is_integer():
        problems.append(
            f"cluster.gpus_per_worker: above 1 must be a whole number (got {cluster.gpus_per_worker:g})"
        )
    for name in cluster.custom_resources:
        if not name.strip():
            problems.append("cluster.custom_resources: resource names must not be empty")
        for reserved, field in DEDICATED_RESOURCES.items():
            if name.lower() == reserved.lower():
                problems.append(
                    f"cluster.custom_resources.{name}: request {reserved} with {field} instead"
                )
    return problems
