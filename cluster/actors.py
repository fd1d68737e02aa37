"""Ray actor handles as the rest of cluster/ sees them.

Ray types `handle.method.remote()` and `ray.get()` loosely: actor methods are looked up
dynamically, and `ray.get`'s overloads then resolve to lists, so a type checker cannot follow a
call through a handle. Handles are therefore `Any` here, in one place, instead of a cast at
every call; the methods called on them are those of the actor classes (RunCollector,
ShardServer), which are typed and tested without Ray.
"""

from __future__ import annotations

from typing import Any, TypeAlias

ActorHandle: TypeAlias = Any


def get(refs: Any, timeout: float | None = None) -> Any:
    """`ray.get` of one remote call (or a list of them), typed as Any: see the module docstring."""
    import ray

    return ray.get(refs, timeout=timeout)
