"""Torch-free pieces of the trainer that the launcher may import: the job schema and shard manifest."""

from trainer.config.manifest import MANIFEST_FORMAT_VERSION, ShardInfo, ShardManifest
from trainer.config.schema import JobConfig

__all__ = ["MANIFEST_FORMAT_VERSION", "JobConfig", "ShardInfo", "ShardManifest"]
