"""Tokenize a split once into Arrow IPC shards plus a manifest.

Runs in the launcher, so it uses the `tokenizers` library directly (torch-free). Output goes
either to a content-keyed cache (what `ftlaunch run` does for raw files) or to a directory the
user names (`ftlaunch prepare`). Either way shards are written into a staging directory next to
the target and published by rename only after every shard and the manifest are fsynced, so a
killed prepare never leaves a manifest that points at partial shards.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
from tokenizers import Tokenizer

from launcher.data.causal import CausalEncoder, CausalFormat
from launcher.data.digests import InputDigests
from launcher.data.sources import (
    SplitSource,
    iter_source_batches,
    label_strings,
    source_fingerprint,
)
from launcher.errors import UserError
from trainer.formats.durable import fsync_path, replace_atomically, sha256_file
from trainer.formats.shards import (
    CAUSAL_SCHEMA,
    MANIFEST_FORMAT_VERSION,
    MANIFEST_NAME,
    SHARD_SCHEMA,
    ShardInfo,
    ShardManifest,
)

DEFAULT_SHARD_BYTES = 64 << 20
TOKENIZE_BATCH_ROWS = 1024
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
)

ProgressCallback = Callable[[int], None]  # called with the number of rows just written


@dataclass(frozen=True)
class TokenizeOptions:
    model_dir: Path
    max_length: int
    label_names: list[str]
    shard_bytes: int = DEFAULT_SHARD_BYTES
    batch_rows: int = TOKENIZE_BATCH_ROWS
    causal: CausalFormat | None = None  # None: sequence-classification shards


@dataclass(frozen=True)
class PreparedSplit:
    directory: Path
    manifest: ShardManifest
    reused: bool


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


def prepare_split(
    source: SplitSource,
    split: str,
    options: TokenizeOptions,
    cache_root: Path,
    digests: InputDigests | None = None,
) -> PreparedSplit:
    """Tokenize a split into the content-keyed cache, or reuse an identical earlier result
    (`digests`: file digests known from earlier runs).

    Raises:
        UserError: unreadable input, missing column, empty split, or a label outside `label_names`.
    """
    model_dir, causal = options.model_dir, options.causal
    source_sha = source_fingerprint(source, digests)
    fingerprint = tokenizer_fingerprint(model_dir, options.max_length)
    parts = [
        MANIFEST_FORMAT_VERSION,
        source_sha,
        fingerprint,
        source.text_column,
        source.label_column,
        options.label_names,
    ]
    if causal is not None:  # only then, so classification cache keys stay what they were
        parts.append(causal.cache_key(model_dir))
    target = cache_root / hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:32]
    if (target / MANIFEST_NAME).is_file():
        return PreparedSplit(target, ShardManifest.read(target), reused=True)
    manifest = tokenize_into(source, split, options, target, source_sha)
    return PreparedSplit(target, manifest, reused=False)


def prepare_into(
    source: SplitSource,
    split: str,
    options: TokenizeOptions,
    out_dir: Path,
    progress: ProgressCallback | None = None,
) -> PreparedSplit:
    """`ftlaunch prepare`: tokenize into `out_dir`, unless it already holds this exact result.

    Raises:
        UserError: `out_dir` holds anything but an earlier prepared split (it is replaced as a
            whole), or a bad input.
    """
    check_replaceable(out_dir)
    source_sha = source_fingerprint(source)
    if (out_dir / MANIFEST_NAME).is_file():
        try:
            existing = ShardManifest.read(out_dir)
        except ValueError:
            existing = None
        if existing is not None and _matches(existing, source, options, source_sha):
            return PreparedSplit(out_dir, existing, reused=True)
    manifest = tokenize_into(source, split, options, out_dir, source_sha, progress)
    return PreparedSplit(out_dir, manifest, reused=False)


def check_replaceable(out_dir: Path) -> None:
    """`--out` is replaced as a whole, so it may only be new, empty, or an earlier prepared
    split: its manifest and the shards that manifest lists, nothing else.

    Raises:
        UserError: a file or link, or a directory holding anything else (named).
    """
    if out_dir.is_symlink() or (out_dir.exists() and not out_dir.is_dir()):
        raise UserError(f"--out: {out_dir} is not a directory; give a new or empty one")
    if not out_dir.exists():
        return
    entries = sorted(p.name for p in out_dir.iterdir())
    if not entries:
        return
    try:
        listed = {MANIFEST_NAME, *(s.file for s in ShardManifest.read(out_dir).shards)}
    except ValueError:
        listed = set()
    strangers = [name for name in entries if name not in listed]
    if strangers:
        raise UserError(
            f"--out: {out_dir} holds {strangers[0]!r}"
            f"{f' and {len(strangers) - 1} more' if len(strangers) > 1 else ''}, which is not "
            "part of a prepared split; --out is replaced as a whole, so give a new or empty "
            "directory (or an earlier --out of ftlaunch prepare)"
        )


def _matches(
    manifest: ShardManifest, source: SplitSource, options: TokenizeOptions, source_sha: str
) -> bool:
    return (
        manifest.source_sha256 == source_sha
        and manifest.tokenizer_fingerprint
        == tokenizer_fingerprint(options.model_dir, options.max_length)
        and (manifest.text_column, manifest.label_column)
        == (source.text_column, source.label_column)
        and manifest.label_names == options.label_names
        and (manifest.data_format, manifest.packing)
        == ((options.causal.format, options.causal.packing) if options.causal else (None, False))
    )


def tokenize_into(
    source: SplitSource,
    split: str,
    options: TokenizeOptions,
    target: Path,
    source_sha: str,
    progress: ProgressCallback | None = None,
) -> ShardManifest:
    """Tokenize every input row into shards under `target`, replacing what was there atomically."""
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        causal = options.causal
        encoder = (
            CausalEncoder(options.model_dir, options.max_length, causal, source.field)
            if causal
            else None
        )
        writer = _ShardWriter(
            staging, options.shard_bytes, CAUSAL_SCHEMA if causal else SHARD_SCHEMA
        )
        tokenizer = _load_tokenizer(options.model_dir, options.max_length)
        label_ids = {name: i for i, name in enumerate(options.label_names)}
        for path, batch in iter_source_batches(source):
            for start in range(
                0, batch.num_rows, options.batch_rows
            ):  # bounds memory and block size
                piece = batch.slice(start, options.batch_rows)
                if encoder is not None:
                    where = f"{source.field}: {path}"
                    writer.add(encoder.record_batch(piece, where, writer.rows))
                else:
                    writer.add(
                        _tokenize_batch(piece, tokenizer, label_ids, source, path, writer.rows)
                    )
                if progress:
                    progress(piece.num_rows)
        shards = writer.close()
        if writer.rows == 0:
            raise UserError(f"{source.field}: no rows in {source.describe()}")
        manifest = ShardManifest(
            format_version=MANIFEST_FORMAT_VERSION,
            split=split,
            source=source.describe(),
            source_sha256=source_sha,
            tokenizer_fingerprint=tokenizer_fingerprint(options.model_dir, options.max_length),
            max_length=options.max_length,
            text_column=source.text_column,
            label_column=source.label_column,
            label_names=options.label_names,
            pad_token_id=_pad_token_id(options.model_dir, tokenizer),
            total_rows=writer.rows,
            total_tokens=writer.tokens,
            label_counts=writer.label_counts(len(options.label_names)),
            shards=shards,
            schema_fields={f.name: str(f.type) for f in writer.schema},
            **_causal_fields(encoder, options.max_length),
        )
        manifest.write(staging)
        fsync_path(staging / MANIFEST_NAME)
        fsync_path(staging)
        replace_atomically(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return manifest


def _causal_fields(encoder: CausalEncoder | None, max_length: int) -> dict:
    if encoder is None:
        return {}
    return {
        "task": "causal-lm",
        "data_format": encoder.fmt.format,
        "packing": encoder.fmt.packing,
        "examples": encoder.examples,
        "loss_tokens": encoder.loss_tokens,
        "slot_tokens": encoder.slot_tokens,
    }


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
    path: Path,
    first_id: int,
) -> pa.RecordBatch:
    texts = batch.column(0)
    if texts.null_count:
        raise UserError(
            f"{source.field}: {path} has empty values in text column {source.text_column!r}"
        )
    labels = label_strings(batch.column(1), source, path)
    unknown = sorted(set(labels) - label_ids.keys())
    if unknown:
        raise UserError(
            f"{source.field}: label(s) {', '.join(map(repr, unknown[:5]))} in {path} never appear "
            f"in data.train (train labels: {', '.join(label_ids)})"
        )
    ids = [e.ids for e in tokenizer.encode_batch([str(t) for t in texts.to_pylist()])]
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

    def __init__(self, directory: Path, shard_bytes: int, schema: pa.Schema = SHARD_SCHEMA) -> None:
        self.directory = directory
        self.shard_bytes = shard_bytes
        self.schema = schema
        self.rows = 0
        self.tokens = 0
        self._label_counts: dict[int, int] = {}
        self._shards: list[ShardInfo] = []
        self._writer: pa.ipc.RecordBatchFileWriter | None = None
        self._sink: pa.OSFile | None = None
        self._path = directory
        self._batch_rows: list[int] = []
        self._shard_first_id = 0

    def add(self, batch: pa.RecordBatch) -> None:
        writer, sink = self._writer, self._sink
        if writer is None or sink is None:
            writer, sink = self._open()
        writer.write_batch(batch)
        self._batch_rows.append(batch.num_rows)
        self.rows += batch.num_rows
        self.tokens += int(batch.column("length").to_numpy().sum())
        if "label" in self.schema.names:  # causal-lm shards have token labels instead
            for entry in batch.column("label").value_counts().to_pylist():
                self._label_counts[entry["values"]] = (
                    self._label_counts.get(entry["values"], 0) + entry["counts"]
                )
        if sink.tell() >= self.shard_bytes:
            self._finish_shard()

    def label_counts(self, num_labels: int) -> list[int]:
        return [self._label_counts.get(i, 0) for i in range(num_labels)]

    def close(self) -> list[ShardInfo]:
        if self._writer is not None:
            self._finish_shard()
        return self._shards

    def _open(self) -> tuple[pa.ipc.RecordBatchFileWriter, pa.OSFile]:
        self._path = self.directory / f"shard-{len(self._shards):05d}.arrow"
        self._sink = pa.OSFile(str(self._path), "wb")
        self._writer = pa.ipc.new_file(self._sink, self.schema)
        self._batch_rows = []
        self._shard_first_id = self.rows
        return self._writer, self._sink

    def _finish_shard(self) -> None:
        if self._writer is None or self._sink is None:
            return
        self._writer.close()
        self._sink.close()
        fsync_path(self._path)
        self._shards.append(
            ShardInfo(
                file=self._path.name,
                rows=sum(self._batch_rows),
                bytes=self._path.stat().st_size,
                sha256=sha256_file(self._path),
                first_sample_id=self._shard_first_id,
                batch_rows=self._batch_rows,
            )
        )
        self._writer = None
        self._sink = None
