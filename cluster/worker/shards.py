"""Worker-side ShardStore for splits that only the head node can see: every record batch is
fetched from the head's shard server (cluster/head/shard_server.py) when the reader needs it."""

from __future__ import annotations

import pyarrow as pa

from cluster.actors import ActorHandle, get
from trainer.formats.shard_stores import deserialize_block
from trainer.formats.shards import MANIFEST_NAME, ShardManifest


class HeadShardStore:
    """Worker-side ShardStore that reads through the head's ShardServer."""

    def __init__(self, server: ActorHandle, location: str) -> None:
        self._server = server
        self._location = location
        text = get(server.manifest_json.remote(location))
        self._manifest = ShardManifest.from_json(text, where=f"head:{location}/{MANIFEST_NAME}")

    def read_manifest(self) -> ShardManifest:
        return self._manifest

    def read_block(self, shard_file: str, batch_index: int) -> pa.RecordBatch:
        return deserialize_block(
            get(self._server.block.remote(self._location, shard_file, batch_index))
        )
