"""Tokenizing raw splits into cached Arrow shards: content-keyed reuse, and bad inputs."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from launcher.data.sources import SplitSource, collect_label_names
from launcher.data.tokenize import TokenizeOptions, prepare_split
from launcher.errors import UserError
from tests.fixtures import keyword_rows, minilm_dir, write_jsonl
from trainer.formats.shards import ShardManifest, verify_shards


def _source(path: Path, field: str = "data.train") -> SplitSource:
    return SplitSource.single(field, path, "text", "label")


def _prepare(path: Path, cache: Path, labels: list[str] | None = None, **kw):
    source = _source(path)
    labels = labels or collect_label_names(source)
    return prepare_split(source, "train", TokenizeOptions(minilm_dir(), 32, labels, **kw), cache)


def test_shards_hold_every_row_and_a_manifest(tmp_path: Path, cache_dir: Path) -> None:
    data = write_jsonl(tmp_path / "train.jsonl", keyword_rows(300, 0))
    prepared = _prepare(data, cache_dir, shard_bytes=4096, batch_rows=64)
    manifest = ShardManifest.read(prepared.directory)
    assert manifest.total_rows == 300 and len(manifest.shards) > 1
    assert manifest.label_names == ["neg", "pos"]
    assert sum(s.rows for s in manifest.shards) == 300
    verify_shards(prepared.directory, manifest)
    tables = [
        pa.ipc.open_file(pa.memory_map(str(prepared.directory / s.file))).read_all()
        for s in manifest.shards
    ]
    ids = [i for t in tables for i in t.column("sample_id").to_pylist()]
    assert ids == list(range(300))
    first = tables[0].to_pylist()[0]
    assert first["input_ids"][0] == 101 and first["input_ids"][-1] == 102  # [CLS] ... [SEP]
    assert first["length"] == len(first["input_ids"]) <= 32


def test_second_prepare_reuses_the_cache_and_changed_input_does_not(
    tmp_path: Path, cache_dir: Path
) -> None:
    data = write_jsonl(tmp_path / "train.jsonl", keyword_rows(50, 0))
    first = _prepare(data, cache_dir)
    second = _prepare(data, cache_dir)
    assert not first.reused and second.reused and first.directory == second.directory
    write_jsonl(data, keyword_rows(51, 0))
    third = _prepare(data, cache_dir)
    assert not third.reused and third.directory != first.directory
    assert third.manifest.total_rows == 51


def test_prepare_is_deterministic(tmp_path: Path) -> None:
    data = write_jsonl(tmp_path / "train.jsonl", keyword_rows(80, 0))
    a = _prepare(data, tmp_path / "c1")
    b = _prepare(data, tmp_path / "c2")
    assert [s.sha256 for s in a.manifest.shards] == [s.sha256 for s in b.manifest.shards]


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_csv_and_parquet_inputs(tmp_path: Path, cache_dir: Path, suffix: str) -> None:
    table = pa.Table.from_pylist(keyword_rows(40, 1))
    path = tmp_path / f"train{suffix}"
    pacsv.write_csv(table, path) if suffix == ".csv" else pq.write_table(table, path)
    assert _prepare(path, cache_dir).manifest.total_rows == 40


def test_integer_labels_keep_numeric_order(tmp_path: Path) -> None:
    rows = [{"text": f"row {i}", "label": i % 11} for i in range(44)]
    path = write_jsonl(tmp_path / "train.jsonl", rows)
    assert collect_label_names(_source(path)) == [str(i) for i in range(11)]


def test_missing_file(tmp_path: Path, cache_dir: Path) -> None:
    with pytest.raises(UserError, match=r"^data.train: file not found: .*nope.jsonl"):
        collect_label_names(_source(tmp_path / "nope.jsonl"))


def test_empty_file(tmp_path: Path) -> None:
    (tmp_path / "train.jsonl").write_text("")
    with pytest.raises(UserError, match=r"data\.train: file is empty"):
        collect_label_names(_source(tmp_path / "train.jsonl"))


def test_missing_column_names_the_option_and_lists_columns(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "train.jsonl", [{"body": "x", "label": "a"}, {"body": "y", "label": "b"}]
    )
    with pytest.raises(UserError) as info:
        collect_label_names(_source(path))
    (message,) = info.value.messages
    assert "no column 'text' (data.text_column); columns: body, label" in message


def test_label_unseen_in_train_is_refused(tmp_path: Path, cache_dir: Path) -> None:
    rows = [*keyword_rows(20, 0), {"text": "what is this", "label": "maybe"}]
    path = write_jsonl(tmp_path / "validation.jsonl", rows)
    with pytest.raises(UserError) as info:
        prepare_split(
            _source(path, "data.validation"),
            "validation",
            TokenizeOptions(minilm_dir(), 32, ["neg", "pos"]),
            cache_dir,
        )
    (message,) = info.value.messages
    assert (
        message.startswith("data.validation: label(s) 'maybe'")
        and "never appear in data.train" in message
    )
    assert not any(cache_dir.glob("*/manifest.json"))  # nothing half-written was published


def test_malformed_json_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "train.jsonl"
    path.write_text('{"text": "ok", "label": "a"}\n{"text": broken\n')
    with pytest.raises(UserError, match=r"data.train: cannot read .*train.jsonl"):
        collect_label_names(_source(path))


def test_corrupted_shard_is_detected(tmp_path: Path, cache_dir: Path) -> None:
    data = write_jsonl(tmp_path / "train.jsonl", keyword_rows(30, 0))
    prepared = _prepare(data, cache_dir)
    shard = prepared.directory / prepared.manifest.shards[0].file
    raw = bytearray(shard.read_bytes())
    raw[-100] ^= 0xFF
    shard.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="sha256 does not match"):
        verify_shards(prepared.directory, prepared.manifest)


def test_unknown_manifest_version_is_refused(tmp_path: Path, cache_dir: Path) -> None:
    data = write_jsonl(tmp_path / "train.jsonl", keyword_rows(10, 0))
    prepared = _prepare(data, cache_dir)
    manifest_file = prepared.directory / "manifest.json"
    raw = json.loads(manifest_file.read_text())
    raw["format_version"] = 99
    manifest_file.write_text(json.dumps(raw))
    with pytest.raises(ValueError, match="unknown manifest format_version 99"):
        ShardManifest.read(prepared.directory)
