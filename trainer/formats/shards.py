"""One tokenized split on disk: Arrow IPC shards with a fixed row schema, plus the manifest that
lists them with their checksums.

Written by the launcher (`launcher/data/`), read by every worker (`trainer/data/`) and served by
the head (`cluster/head/shard_server.py`); all import this one definition so the format cannot
drift between writer and reader.
"""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import urlparse

import pyarrow as pa
from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from trainer.formats.durable import sha256_file

MANIFEST_FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
# A split location with one of these schemes is read through pyarrow.fs instead of the local disk.
REMOTE_SCHEMES = ("s3", "gs", "gcs", "hdfs", "viewfs", "file", "abfs", "abfss")
# A token label that carries no loss (prompt, non-assistant turns, padding): torch's default
# ignore_index, stored as such in causal-lm shards.
IGNORE_INDEX = -100

# sequence-classification rows: the tokens of one example and its label id.
SHARD_SCHEMA = pa.schema(
    [
        ("sample_id", pa.int64()),
        ("input_ids", pa.list_(pa.int32())),
        ("length", pa.int32()),
        ("label", pa.int64()),
    ]
)
# causal-lm rows: one example, or several packed (position ids restart at each example).
CAUSAL_SCHEMA = pa.schema(
    [
        ("sample_id", pa.int64()),
        ("input_ids", pa.list_(pa.int32())),
        ("labels", pa.list_(pa.int32())),
        ("position_ids", pa.list_(pa.int32())),
        ("length", pa.int32()),
    ]
)


class CorruptShardError(ValueError):
    """A shard's bytes differ from its manifest: bad input, never something to train on."""


def is_remote_uri(location: str) -> bool:
    return urlparse(location).scheme in REMOTE_SCHEMES


class ShardInfo(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    file: str
    rows: int
    bytes: int
    sha256: str
    first_sample_id: int
    batch_rows: list[int]  # rows of each IPC record batch: the unit of reading and shuffling

    @field_validator("file")
    @classmethod
    def _a_file_beside_the_manifest(cls, name: str) -> str:
        # Manifests travel (prepared splits are shared, the head serves them): a shard is always
        # a plain file next to its manifest, never a path elsewhere.
        if "/" in name or "\\" in name or name in ("", ".", "..") or "\0" in name:
            raise ValueError(f"shard file {name!r}: must be a file name beside the manifest")
        return name


class ShardManifest(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    format_version: int
    split: str
    source: str
    source_sha256: str
    tokenizer_fingerprint: str
    max_length: int
    text_column: str
    label_column: str
    label_names: list[str]
    pad_token_id: int
    total_rows: int
    total_tokens: int
    label_counts: list[int]  # rows per label id, for the majority baseline without a data pass
    shards: list[ShardInfo]
    schema_fields: dict[str, str]
    # causal-lm splits (defaults describe classification shards, so older manifests still read)
    task: str = "sequence-classification"
    data_format: str | None = None
    packing: bool = False
    examples: int = 0  # input rows; with packing several share one stored row
    loss_tokens: int = 0  # tokens whose label is not -100
    slot_tokens: int = 0  # packed: rows x max_length, the positions a packed batch computes

    def packing_efficiency(self) -> float | None:
        """Useful tokens / token slots of the stored rows (None unless packed)."""
        return self.total_tokens / self.slot_tokens if self.packing and self.slot_tokens else None

    @classmethod
    def read(cls, directory: str | Path) -> ShardManifest:
        """Load and check a manifest; raises ValueError naming the file on any problem."""
        path = Path(directory) / MANIFEST_NAME
        try:
            text = path.read_text()
        except OSError as exc:
            raise ValueError(f"{path}: unreadable manifest ({exc.strerror or exc})") from exc
        return cls.from_json(text, where=str(path))

    @classmethod
    def from_json(cls, text: str, where: str) -> ShardManifest:
        """Parse and check a manifest; `where` names the file in every error."""
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{where}: unreadable manifest ({exc})") from exc
        version = raw.get("format_version") if isinstance(raw, dict) else None
        if version != MANIFEST_FORMAT_VERSION:
            raise ValueError(
                f"{where}: unknown manifest format_version {version!r} "
                f"(this ftlaunch reads {MANIFEST_FORMAT_VERSION})"
            )
        try:
            return cls.model_validate(raw)
        except ValidationError as exc:
            raise ValueError(f"{where}: malformed manifest ({exc.errors()[0]['msg']})") from None

    def write(self, directory: str | Path) -> Path:
        path = Path(directory) / MANIFEST_NAME
        path.write_text(json.dumps(self.model_dump(), indent=2, sort_keys=True) + "\n")
        return path


def read_manifest_uri(uri: str) -> ShardManifest:
    """The manifest of a prepared split behind a pyarrow.fs URI (s3://, gs://, hdfs://, file://)."""
    import pyarrow.fs as pafs

    filesystem, root = pafs.FileSystem.from_uri(uri)
    with filesystem.open_input_stream(f"{root}/{MANIFEST_NAME}") as fh:
        return ShardManifest.from_json(fh.read().decode(), where=f"{uri}/{MANIFEST_NAME}")


def verify_shards(directory: str | Path, manifest: ShardManifest) -> None:
    """Check each shard's size and sha256 against the manifest.

    Raises:
        CorruptShardError: naming the first missing, truncated or corrupted shard file.
    """
    check_shard_sizes(directory, manifest)
    for shard in manifest.shards:
        verify_shard_sha(Path(directory) / shard.file, shard)


def check_shard_sizes(directory: str | Path, manifest: ShardManifest) -> None:
    """The cheap part of the check (no byte read): each shard is there, at its listed size.

    Raises:
        CorruptShardError: naming the first missing or truncated shard file.
    """
    for shard in manifest.shards:
        path = Path(directory) / shard.file
        try:
            size = path.stat().st_size
        except OSError:
            raise CorruptShardError(f"{path}: shard listed in the manifest is missing") from None
        if size != shard.bytes:
            raise CorruptShardError(
                f"{path}: size {size} differs from the manifest's {shard.bytes}"
            )


def verify_shard_sha(path: Path, shard: ShardInfo) -> None:
    """Raises CorruptShardError naming `path` if its bytes are not the manifest's."""
    if sha256_file(path) != shard.sha256:
        raise CorruptShardError(f"{path}: sha256 does not match the manifest (corrupted shard)")
