"""Local shards are verified lazily: a store opens after a size check, each shard's sha256 is
checked before the first of its blocks is handed out, and a corrupted shard is refused by name
while the intact ones before it stay readable."""

from __future__ import annotations

from pathlib import Path

import pytest

from launcher.data.sources import SplitSource
from launcher.data.tokenize import TokenizeOptions, prepare_split
from tests.fixtures import keyword_rows, minilm_dir, write_jsonl
from trainer.formats.shard_stores import LocalShardStore
from trainer.formats.shards import CorruptShardError, ShardManifest


@pytest.fixture()
def split_dir(tmp_path: Path) -> Path:
    data = write_jsonl(tmp_path / "train.jsonl", keyword_rows(120, 3))
    source = SplitSource.single("data.train", data, "text", "label")
    options = TokenizeOptions(minilm_dir(), 32, ["neg", "pos"], shard_bytes=2000, batch_rows=16)
    prepared = prepare_split(source, "train", options, tmp_path / "cache")
    assert len(prepared.manifest.shards) >= 2
    return prepared.directory


def _flip(path: Path, offset: int) -> None:
    raw = bytearray(path.read_bytes())
    raw[offset] ^= 0xFF
    path.write_bytes(bytes(raw))


def test_a_corrupted_shard_is_refused_at_its_first_block(split_dir: Path) -> None:
    manifest = ShardManifest.read(split_dir)
    first, second = manifest.shards[0], manifest.shards[1]
    _flip(split_dir / second.file, second.bytes // 2)
    store = LocalShardStore(split_dir)  # sizes only: opening is not a hashing pass
    rows = store.read_block(first.file, 0).num_rows
    assert rows == first.batch_rows[0]
    with pytest.raises(CorruptShardError, match=rf"{second.file}: sha256 does not match"):
        store.read_block(second.file, 0)
    with pytest.raises(CorruptShardError, match=second.file):  # refused every time, not once
        store.read_block(second.file, len(second.batch_rows) - 1)


def test_a_truncated_shard_is_refused_when_the_store_opens(split_dir: Path) -> None:
    shard = ShardManifest.read(split_dir).shards[-1]
    path = split_dir / shard.file
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(CorruptShardError, match=rf"{shard.file}: size \d+ differs"):
        LocalShardStore(split_dir)
