"""Serve prepared shards that exist only on the head node to workers on other nodes.

A Ray actor pinned to the head holds a LocalShardStore per split and hands out one IPC-encoded
record batch per call. Workers ask for a block only when their reader needs it (the reader
prefetches a few micro-batches ahead), so a slow worker never makes the head buffer the dataset:
the head holds at most the blocks currently being sent.
"""

from __future__ import annotations

import threading

import ray

from cluster.actors import ActorHandle
from trainer.formats.shard_stores import LocalShardStore, serialize_block
from trainer.formats.shards import is_remote_uri


class ShardServer:
    """Plain class (tested without Ray); `shard_server_actor()` runs it on the head."""

    def __init__(self, locations: list[str]) -> None:
        self._stores = {loc: LocalShardStore(loc) for loc in locations}
        self._lock = threading.Lock()
        self.blocks_served = 0
        self.bytes_served = 0

    def manifest_json(self, location: str) -> str:
        return self._store(location).read_manifest().model_dump_json()

    def block(self, location: str, shard_file: str, batch_index: int) -> bytes:
        data = serialize_block(self._store(location).read_block(shard_file, batch_index))
        with self._lock:
            self.blocks_served += 1
            self.bytes_served += len(data)
        return data

    def stats(self) -> dict[str, int]:
        return {
            "head_streamed_blocks": self.blocks_served,
            "head_streamed_bytes": self.bytes_served,
        }

    def _store(self, location: str) -> LocalShardStore:
        store = self._stores.get(location)
        if store is None:
            raise KeyError(f"{location}: not a split of this run")
        return store


def shard_server_actor(locations: list[str]) -> ActorHandle:
    """Start the server on this (the driver's, i.e. head's) node for the local split locations."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    local = [loc for loc in locations if not is_remote_uri(loc)]
    here = ray.get_runtime_context().get_node_id()
    actor_cls: ActorHandle = ray.remote(ShardServer)
    strategy = NodeAffinitySchedulingStrategy(node_id=here, soft=False)
    return actor_cls.options(num_cpus=0, max_concurrency=8, scheduling_strategy=strategy).remote(
        local
    )
