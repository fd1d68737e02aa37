"""Ray Train's torch backend with one change: the process group's rendezvous store listens on the
master address only (trainer/engines/process_group.py says why), not on every interface.

`BoundStoreTorchConfig` is a `TorchConfig` whose backend does what Ray Train's `on_start` does for
gloo and NCCL (master address and port from rank 0, the torch env vars, one setup call per
worker) but joins through `join_process_group`. Ray's helpers for the first two are private
(`ray.train._internal`, `ray.train.torch.config`): pinned by `ray>=2.52`, and an integration test
fails if a listener ever shows beyond loopback again (tests/integration/test_closed_by_default.py).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

from ray.train._internal.utils import get_address_and_port
from ray.train._internal.worker_group import WorkerGroup as V1WorkerGroup
from ray.train.torch import TorchConfig
from ray.train.torch.config import _set_torch_distributed_env_vars, _TorchBackend

from cluster.actors import get

PROCESS_GROUP_ENTRY = "trainer.engines.process_group:join_process_group"


class _BoundStoreBackend(_TorchBackend):
    def on_start(self, worker_group: Any, backend_config: Any) -> None:
        master_addr, master_port = worker_group.execute_single(0, get_address_and_port)
        if not isinstance(worker_group, V1WorkerGroup):
            worker_group.execute(_set_torch_distributed_env_vars)
        settings = {
            "backend": backend_config.backend,
            "world_size": len(worker_group),
            "master_addr": master_addr,
            "master_port": master_port,
            "timeout_s": backend_config.timeout_s,
        }
        # (one dict: Ray's execute_single_async takes the worker's index as `rank` itself)
        joins = [
            worker_group.execute_single_async(i, _join, settings=settings | {"rank": i})
            for i in range(len(worker_group))
        ]
        get(joins, timeout=backend_config.timeout_s)  # the store's own timeout bounds it too


@dataclass
class BoundStoreTorchConfig(TorchConfig):
    """TorchConfig (backend: gloo or nccl, always given) with the store bound as above."""

    @property
    def backend_cls(self) -> type[_TorchBackend]:
        return _BoundStoreBackend


def _join(settings: dict[str, Any]) -> None:
    """In the worker: the trainer's join, named by a string (cluster never imports torch)."""
    module, _, name = PROCESS_GROUP_ENTRY.partition(":")
    getattr(importlib.import_module(module), name)(**settings)
