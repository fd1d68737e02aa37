"""Backends by name (`cluster.backend`), like submitit's AutoExecutor."""

from __future__ import annotations

from pathlib import Path

from cluster.ray.backend import RayBackend
from cluster.ray.embedded import EmbeddedCluster
from trainer.config.schema import ClusterConfig

BACKENDS = {"ray": RayBackend}


def backend_for(
    cluster: ClusterConfig,
    token_dir: Path | None = None,
    insecure: bool = False,
    embedded: EmbeddedCluster | None = None,
) -> RayBackend:
    """The backend of `cluster`; `embedded`: its embedded Ray, if launched early."""
    return BACKENDS[cluster.backend](
        cluster, token_dir=token_dir, insecure=insecure, embedded=embedded
    )
