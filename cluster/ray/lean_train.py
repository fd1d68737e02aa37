"""Ray Train without the helper actors an ftlaunch run never uses.

Ray Train (v2) starts, beside the controller, the synchronisation actor and the rank workers, a
process for each of these on every run (each one imports Ray, ~1-2 s of CPU at start, on the
cores the ranks are importing torch on; counted by `benchmarks/overhead.py`, which names every
actor and when it started):
- a DatasetManager, Ray Data's shard service, made even when `datasets` is empty: ftlaunch
  streams its own Arrow shards and never passes Ray Data datasets. Dropped on every cluster.
- a PlacementGroupCleaner, a detached actor that removes the run's placement groups if the
  controller dies without doing it, and a PreemptionWatcher, which polls Ray Core for nodes being
  drained (a cloud's spot notice). Both are kept on a user's cluster. On the embedded cluster
  both are useless: its one node is never drained, and the whole cluster, placement groups
  included, stops with the launcher.
A user's own RAY_TRAIN_ENABLE_PREEMPTION_WATCHER setting wins. A Ray release that renames these
callbacks keeps them (nothing is filtered by an unknown name): slower, never broken.
"""

from __future__ import annotations

import os
from typing import Any

UNUSED_CALLBACKS = frozenset({"DatasetsCallback"})
UNUSED_ON_ONE_MACHINE = frozenset({"PlacementGroupCleanerCallback"})
# Read by Ray Train's controller, which gets it from the driver's environment.
ONE_MACHINE_ENV = {"RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0"}


def unused_callbacks(embedded: bool) -> frozenset[str]:
    """Class names of Ray Train's default callbacks that this run does without (pure)."""
    return UNUSED_CALLBACKS | (UNUSED_ON_ONE_MACHINE if embedded else frozenset())


def lean_torch_trainer(embedded: bool) -> type:
    """TorchTrainer whose default callbacks leave out `unused_callbacks(embedded)`; on the
    embedded cluster, also sets ONE_MACHINE_ENV in this (the driver's) process unless set."""
    from ray.train.torch import TorchTrainer

    unused = unused_callbacks(embedded)
    if embedded:
        for name, value in ONE_MACHINE_ENV.items():
            os.environ.setdefault(name, value)

    class LeanTorchTrainer(TorchTrainer):
        def _create_default_callbacks(self) -> list[Any]:
            callbacks = super()._create_default_callbacks()  # type: ignore[misc]
            return [c for c in callbacks if type(c).__name__ not in unused]

    return LeanTorchTrainer
