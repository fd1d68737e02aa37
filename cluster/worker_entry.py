"""What Ray Train runs in each worker: wire Ray-backed reporter, sink and shard access into the
trainer loop. torch and the trainer loop are imported inside the function, so importing
`cluster` stays light."""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from typing import Any

import ray

from cluster.checkpoint_sink import RayCheckpointSink
from cluster.collector import CollectorReporter, CollectorSink, CollectorStopSignal
from cluster.ray_token import load_token
from cluster.secret_env import unseal_into_environ
from cluster.shard_server import HeadShardStore


def train_worker(loop_config: dict[str, Any]) -> None:
    from trainer.config.spec import RunSpec

    spec = RunSpec.model_validate(loop_config["spec"])
    if spec.job.model.is_causal_lm():
        from trainer.causal_loop import run_causal_lm as run_task
    else:
        from trainer.loop import run_classification as run_task
    collector = loop_config["collector"]
    start = rank_start_record()
    collector.report.remote(start)
    # Secrets arrive sealed (cluster/secret_env.py); names only are reported, for audits.
    names = unseal_into_environ(load_token())
    if names:
        collector.report.remote({"event": "secret_env", "rank": start["rank"], "names": names})
    open_store = store_opener(loop_config["shard_server"])
    on_head = ray.get_runtime_context().get_node_id() == loop_config["head_node_id"]
    checkpoints = RayCheckpointSink(collector, on_head, spec.run_id, spec.resume_tag, start["rank"])
    run_task(
        spec,
        CollectorReporter(collector),
        CollectorSink(collector),
        open_store,
        checkpoints,
        CollectorStopSignal(collector),
    )


def rank_start_record() -> dict[str, Any]:
    """Where this rank runs (every rank, every attempt), so users and tests can see placement."""
    import ray.train  # worker-side only: keeps `import cluster` light for the launcher

    context = ray.train.get_context()
    return {
        "event": "rank_start",
        "rank": context.get_world_rank(),
        "local_rank": context.get_local_rank(),
        "world_size": context.get_world_size(),
        "node_id": ray.get_runtime_context().get_node_id(),
        "hostname": socket.gethostname(),
        "pid": os.getpid(),
    }


def store_opener(shard_server: Any) -> Callable[[str], Any]:
    """Read a split from where this node can see it; stream it from the head otherwise."""
    from trainer.shards import open_store

    def open_split_store(location: str) -> Any:
        try:
            return open_store(location)
        except FileNotFoundError:  # not on this node's disk: only the head has it
            return HeadShardStore(shard_server, location)

    return open_split_store
