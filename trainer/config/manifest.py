"""The manifest that describes one tokenized split: Arrow IPC shards plus their checksums.

Written by the launcher (`launcher.prepare`), read by every worker (`trainer.data`); both import
this one definition so the format cannot drift between writer and reader.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from pydantic import BaseModel, ConfigDict

MANIFEST_FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"


class ShardInfo(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    file: str
    rows: int
    bytes: int
    sha256: str
    first_sample_id: int


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
    shards: list[ShardInfo]
    schema_fields: dict[str, str]

    @classmethod
    def read(cls, directory: str | Path) -> ShardManifest:
        """Load and check a manifest; raises ValueError naming the file on any problem."""
        path = Path(directory) / MANIFEST_NAME
        try:
            raw = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ValueError(f"{path}: unreadable manifest ({exc})") from exc
        version = raw.get("format_version") if isinstance(raw, dict) else None
        if version != MANIFEST_FORMAT_VERSION:
            raise ValueError(
                f"{path}: unknown manifest format_version {version!r} "
                f"(this ftlaunch reads {MANIFEST_FORMAT_VERSION})"
            )
        return cls.model_validate(raw)

    def write(self, directory: str | Path) -> Path:
        path = Path(directory) / MANIFEST_NAME
        path.write_text(json.dumps(self.model_dump(), indent=2, sort_keys=True) + "\n")
        return path


def sha256_file(path: Path, block: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(block):
            digest.update(chunk)
    return digest.hexdigest()


def verify_shards(directory: str | Path, manifest: ShardManifest) -> None:
    """Check each shard's size and sha256 against the manifest.

    Raises:
        ValueError: naming the first missing, truncated or corrupted shard file.
    """
    for shard in manifest.shards:
        path = Path(directory) / shard.file
        if not path.is_file():
            raise ValueError(f"{path}: shard listed in the manifest is missing")
        if path.stat().st_size != shard.bytes:
            raise ValueError(
                f"{path}: size {path.stat().st_size} differs from the manifest's {shard.bytes}"
            )
        if sha256_file(path) != shard.sha256:
            raise ValueError(f"{path}: sha256 does not match the manifest (corrupted shard)")
