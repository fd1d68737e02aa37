"""What the nodes of a running Ray cluster have, read through a short connection of its own
(`ftlaunch plan`, and `ftlaunch run`'s memory check before anything starts)."""

from __future__ import annotations

import logging
from typing import Any

from cluster.errors import ClusterError


def node_resources(address: str) -> list[dict[str, Any]]:
    """Total resources of every alive node (CPU, GPU, memory in bytes, custom resources).

    Raises:
        ClusterError: cannot connect to `address`.
    """
    import ray

    if ray.is_initialized():
        return _alive()
    try:
        ray.init(address=address, log_to_driver=False, logging_level=logging.ERROR)
    except Exception as exc:  # Ray raises ConnectionError, RuntimeError or its own types here
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ClusterError(
            f"cluster.address: cannot connect to Ray at {address}: {first}"
        ) from None
    try:
        return _alive()
    finally:
        ray.shutdown()


def _alive() -> list[dict[str, Any]]:
    import ray

    return [dict(n["Resources"]) for n in ray.nodes() if n.get("Alive")]
