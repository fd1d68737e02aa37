"""Will the requested workers ever fit on this cluster? A pure check, so we fail fast."""

from __future__ import annotations

import math
from collections.abc import Mapping


def max_placeable_workers(per_worker: Mapping[str, float], nodes: list[Mapping[str, float]]) -> int:
    """How many workers of `per_worker` resources fit on these nodes (each worker on one node)."""
    needed = {k: v for k, v in per_worker.items() if v > 0}
    total = 0
    for node in nodes:
        fits = [math.floor(node.get(name, 0.0) / amount + 1e-9) for name, amount in needed.items()]
        total += min(fits) if fits else 0
    return total


def placement_problem(
    num_workers: int, per_worker: Mapping[str, float], nodes: list[Mapping[str, float]]
) -> str | None:
    """None if `num_workers` fit; otherwise one line saying what is missing."""
    placeable = max_placeable_workers(per_worker, nodes)
    if placeable >= num_workers:
        return None
    wanted = " + ".join(f"{_fmt(v)} {k}" for k, v in per_worker.items() if v > 0)
    have = {k: sum(n.get(k, 0.0) for n in nodes) for k in per_worker if per_worker[k] > 0}
    have_text = ", ".join(f"{_fmt(v)} {k}" for k, v in have.items())
    return (
        f"cluster.num_workers: needs {num_workers} workers x {wanted}; the cluster has "
        f"{len(nodes)} node(s) with {have_text} in total and can place at most {placeable}"
    )


def _fmt(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"
