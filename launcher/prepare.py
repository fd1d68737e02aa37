"""Tokenize raw splits (JSONL, CSV, Parquet) once into Arrow IPC shards plus a manifest.

Runs in the launcher, so it uses the `tokenizers` library directly (torch-free) rather than
transformers. Output lands in a content-keyed cache directory: same source bytes, tokenizer and
options give the same key, so a second run reuses the shards. A directory is published with a
single rename after every shard and the manifest are written, so a killed prepare never leaves a
manifest that points at partial shards.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.json as pajson
import pyarrow.parquet as pq
from tokenizers import Tokenizer

from launcher.errors import UserError
from trainer.config.manifest import (
    MANIFEST_FORMAT_VERSION,
    MANIFEST_NAME,
    ShardInfo,
    ShardManifest,
    sha256_file,
)

SHARD_SCHEMA = pa.schema(
    [
        ("sample_id", pa.int64()),
        ("input_ids", pa.list_(pa.int32())),
        ("length", pa.int32()),
        ("label", pa.int64()),
    ]
)
READ_BLOCK_BYTES = 4 << 20
DEFAULT_SHARD_BYTES = 64 << 20
TOKENIZE_BATCH_ROWS = 1024
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


@dataclass(frozen=True)
class SplitSource:
    """One split as the user named it: the config field (for messages) and the file."""

    field: str
    path: Path
    text_column: str
    label_column: str


def default_cache_root() -> Path:
    return Path(os.environ.get("FTLAUNCH_CACHE", Path.home() / ".cache" / "ftlaunch")) / "shards"


def tokenizer_fingerprint(model_dir: Path, max_length: int) -> str:
    """Hash of the tokenizer files and truncation length: shards are only valid for this pair."""
    digest = hashlib.sha256(f"max_length={max_length}".encode())
    for name in TOKENIZER_FILES:
        file = model_dir / name
        if file.is_file():
            digest.update(name.encode() + b"\0" + file.read_bytes())
    return digest.hexdigest()


def iter_source_batches(source: SplitSource) -> Iterator[pa.RecordBatch]:
    """Stream a JSONL/CSV/Parquet file as record batches of its text and label columns."""
    path = source.path
    if not path.is_file():
        raise UserError(f"{source.field}: file not found: {path}")
    if path.stat().st_size == 0:
        raise UserError(f"{source.field}: file is empty: {path}")
    try:
        batches = _open_batches(path)
        for batch in batches:
            _check_columns(source, batch.schema.names)
            yield batch.select([source.text_column, source.label_column])
    except (pa.ArrowInvalid, pa.ArrowTypeError, OSError) as exc:
        first = str(exc).splitlines()[0]
        raise UserError(f"{source.field}: cannot read {path}: {first}") from None


def _open_batches(path: Path) -> Iterator[pa.RecordBatch]:
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json", ".ndjson"):
        return iter(
            pajson.open_json(path, read_options=pajson.ReadOptions(block_size=READ_BLOCK_BYTES))
        )
    if suffix in (".csv", ".tsv"):
        parse = pacsv.ParseOptions(delimiter="\t" if suffix == ".tsv" else ",")
        return iter(pacsv.open_csv(path, parse_options=parse))
    if suffix in (".parquet", ".pq"):
        return pq.ParquetFile(path).iter_batches(batch_size=8192)
    raise OSError(f"unsupported file type {suffix!r} (use .jsonl, .csv, .tsv or .parquet)")


def _check_columns(source: SplitSource, names: list[str]) -> None:
    for kind, column in (("text", source.text_column), ("label", source.label_column)):
        if column not in names:
            option = f"data.{kind}_column"
            raise UserError(
                f"{source.field}: {source.path} has no column {column!r} ({option}); "
                f"columns: {', '.join(names)}"
            )


def label_strings(column: pa.Array, source: SplitSource) -> list[str]:
    """Labels are strings or integers; both are kept as their string form in the label map."""
    if (
        pa.types.is_integer(column.type)
        or pa.types.is_string(column.type)
        or pa.types.is_large_string(column.type)
    ):
        if column.null_count:
            raise UserError(
                f"{source.field}: {source.path} has empty values in label column {source.label_column!r}"
            )
        return [str(v) for v in column.to_pylist()]
    raise UserError(
        f"{source.field}: label column {source.label_column!r} in {source.path} must hold strings or "
        f"integers, found {column.type}"
    )


def collect_label_names(source: SplitSource) -> list[str]:
    """The label set of the train split, in a stable order (numeric if all labels are integers)."""
    seen: set[str] = set()
    rows = 0
    for batch in iter_source_batches(source):
        seen.update(label_strings(batch.column(1), source))
        rows += batch.num_rows
    if rows == 0:
        raise UserError(f"{source.field}: no rows in {source.path}")
    if len(seen) < 2:
        raise UserError(
            f"{source.field}: {source.path} has {len(seen)} distinct label(s); need at least 2"
        )
    all_ints = all(s.lstrip("-").isdigit() for s in seen)
    return sorted(seen, key=int) if all_ints else sorted(seen)


@dataclass(frozen=True)
class PreparedSplit:
    directory: Path
    manifest: ShardManifest
    reused: bool


def prepare_split(
    source: SplitSource,
    split: str,
    model_dir: Path,
    max_length: int,
    label_names: list[str],
    cache_root: Path,
    shard_bytes: int = DEFAULT_SHARD_BYTES,
    batch_rows: int = TOKENIZE_BATCH_ROWS,
) -> PreparedSplit:
    """Tokenize one split into the cache (or reuse an identical earlier result).

    Raises:
        UserError: unreadable file, missing column, empty split, or a label outside `label_names`.
    """
    if not source.path.is_file():
        raise UserError(f"{source.field}: file not found: {source.path}")
    fingerprint = tokenizer_fingerprint(model_dir, max_length)
    source_sha = sha256_file(source.path)
    key = _cache_key(source, fingerprint, source_sha, label_names)
    final_dir = cache_root / key
    if (final_dir / MANIFEST_NAME).is_file():
        return PreparedSplit(final_dir, ShardManifest.read(final_dir), reused=True)
    cache_root.mkdir(parents=True, exist_ok=True)
    staging = cache_root / f".tmp-{key}-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        writer = _ShardWriter(staging, shard_bytes)
        tokenizer = _load_tokenizer(model_dir, max_length)
        label_ids = {name: i for i, name in enumerate(label_names)}
        for batch in iter_source_batches(source):
            for start in range(
                0, batch.num_rows, batch_rows
            ):  # bounds memory and shard granularity
                piece = batch.slice(start, batch_rows)
                writer.add(_tokenize_batch(piece, tokenizer, label_ids, source, writer.rows))
        shards = writer.close()
        if writer.rows == 0:
            raise UserError(f"{source.field}: no rows in {source.path}")
        manifest = ShardManifest(
            format_version=MANIFEST_FORMAT_VERSION,
            split=split,
            source=str(source.path),
            source_sha256=source_sha,
            tokenizer_fingerprint=fingerprint,
            max_length=max_length,
            text_column=source.text_column,
            label_column=source.label_column,
            label_names=label_names,
            pad_token_id=_pad_token_id(model_dir, tokenizer),
            total_rows=writer.rows,
            total_tokens=writer.tokens,
            shards=shards,
            schema_fields={f.name: str(f.type) for f in SHARD_SCHEMA},
        )
        manifest.write(staging)
        _fsync_dir(staging)
        _publish(staging, final_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return PreparedSplit(final_dir, manifest, reused=False)


def _cache_key(
    source: SplitSource, fingerprint: str, source_sha: str, label_names: list[str]
) -> str:
    parts = [
        MANIFEST_FORMAT_VERSION,
        source_sha,
        fingerprint,
        source.text_column,
        source.label_column,
        label_names,
    ]
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:32]


def _load_tokenizer(model_dir: Path, max_length: int) -> Tokenizer:
    tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    tokenizer.no_padding()  # the worker pads each micro-batch to its own longest sequence
    tokenizer.enable_truncation(max_length)
    return tokenizer


def _pad_token_id(model_dir: Path, tokenizer: Tokenizer) -> int:
    config_file = model_dir / "tokenizer_config.json"
    config = json.loads(config_file.read_text()) if config_file.is_file() else {}
    pad = config.get("pad_token")
    if isinstance(pad, dict):
        pad = pad.get("content")
    token_id = tokenizer.token_to_id(pad) if isinstance(pad, str) else None
    return int(token_id) if token_id is not None else 0


def _tokenize_batch(
    batch: pa.RecordBatch,
    tokenizer: Tokenizer,
    label_ids: dict[str, int],
    source: SplitSource,
    first_id: int,
) -> pa.RecordBatch:
    texts = batch.column(0)
    if texts.null_count:
        raise UserError(
            f"{source.field}: {source.path} has empty values in text column {source.text_column!r}"
        )
    labels = label_strings(batch.column(1), source)
    unknown = sorted(set(labels) - label_ids.keys())
    if unknown:
        raise UserError(
            f"{source.field}: label(s) {', '.join(map(repr, unknown[:5]))} in {source.path} never appear "
            f"in data.train (train labels: {', '.join(label_ids)})"
        )
    encodings = tokenizer.encode_batch([str(t) for t in texts.to_pylist()])
    ids = [e.ids for e in encodings]
    return pa.record_batch(
        [
            pa.array(range(first_id, first_id + len(ids)), pa.int64()),
            pa.array(ids, pa.list_(pa.int32())),
            pa.array([len(x) for x in ids], pa.int32()),
            pa.array([label_ids[x] for x in labels], pa.int64()),
        ],
        schema=SHARD_SCHEMA,
    )


class _ShardWriter:
    """Appends record batches to numbered IPC files, starting a new file past `shard_bytes`."""

    def __init__(self, directory: Path, shard_bytes: int) -> None:
        self.directory = directory
        self.shard_bytes = shard_bytes
        self.rows = 0
        self.tokens = 0
        self._shards: list[ShardInfo] = []
        self._writer: pa.ipc.RecordBatchFileWriter | None = None
        self._sink: pa.OSFile | None = None
        self._shard_rows = 0
        self._shard_first_id = 0
        self._path = directory

    def add(self, batch: pa.RecordBatch) -> None:
        if self._writer is None:
            self._open()
        self._writer.write_batch(batch)
        self._shard_rows += batch.num_rows
        self.rows += batch.num_rows
        self.tokens += int(pc.sum(batch.column("length")).as_py() or 0)
        if self._sink.tell() >= self.shard_bytes:
            self._finish_shard()

    def close(self) -> list[ShardInfo]:
        if self._writer is not None:
            self._finish_shard()
        return self._shards

    def _open(self) -> None:
        path = self.directory / f"shard-{len(self._shards):05d}.arrow"
        self._path = path
        self._sink = pa.OSFile(str(path), "wb")
        self._writer = pa.ipc.new_file(self._sink, SHARD_SCHEMA)
        self._shard_rows = 0
        self._shard_first_id = self.rows

    def _finish_shard(self) -> None:
        self._writer.close()
        self._sink.close()
        path = self._path
        _fsync_file(path)
        self._shards.append(
            ShardInfo(
                file=path.name,
                rows=self._shard_rows,
                bytes=path.stat().st_size,
                sha256=sha256_file(path),
                first_sample_id=self._shard_first_id,
            )
        )
        self._writer = None
        self._sink = None


def _fsync_file(path: Path) -> None:
    with path.open("rb") as fh:
        os.fsync(fh.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _publish(staging: Path, final_dir: Path) -> None:
    try:
        os.rename(staging, final_dir)
    except OSError:
        # Another prepare published the same key first; its content is identical by construction.
        if not (final_dir / MANIFEST_NAME).is_file():
            raise
