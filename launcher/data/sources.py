"""Raw inputs of a split: JSONL, CSV/TSV, Parquet files, or a Hugging Face `datasets` Arrow
directory (what `Dataset.save_to_disk` writes), streamed as record batches of two columns."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.json as pajson
import pyarrow.parquet as pq

from launcher.data.digests import InputDigests
from launcher.errors import UserError
from trainer.formats.durable import sha256_file

READ_BLOCK_BYTES = 4 << 20


@dataclass(frozen=True)
class SplitSource:
    """One split as the user named it: the config field or flag (for messages) and its inputs."""

    field: str
    paths: tuple[Path, ...]
    text_column: str
    label_column: str
    columns: tuple[str, ...] = ()  # causal-lm: the columns to read instead of text and label

    @classmethod
    def single(cls, field: str, path: Path, text_column: str, label_column: str) -> SplitSource:
        return cls(field, (path,), text_column, label_column)

    def selected(self) -> list[str]:
        return list(self.columns) or [self.text_column, self.label_column]

    def describe(self) -> str:
        return ", ".join(str(p) for p in self.paths)

    def input_bytes(self) -> int:
        return sum(f.stat().st_size for p in self.paths for f in _data_files(p))


def check_inputs(source: SplitSource) -> None:
    for path in source.paths:
        if not path.exists():
            raise UserError(f"{source.field}: file not found: {path}")
        if path.is_file() and path.stat().st_size == 0:
            raise UserError(f"{source.field}: file is empty: {path}")
        if path.is_dir() and not _is_hf_dataset_dir(path):
            raise UserError(
                f"{source.field}: {path} is a directory but neither a prepared split "
                "(manifest.json) nor a Hugging Face datasets directory (state.json)"
            )


def source_fingerprint(source: SplitSource, digests: InputDigests | None = None) -> str:
    """sha256 over the bytes of every input file, in order (each file's digest from `digests`
    when it is unchanged since an earlier run)."""
    check_inputs(source)
    file_sha = digests.sha256 if digests is not None else sha256_file
    digest = hashlib.sha256()
    for path in source.paths:
        for file in _data_files(path):
            digest.update(file.name.encode() + b"\0" + file_sha(file).encode())
    return digest.hexdigest()


def iter_source_batches(source: SplitSource) -> Iterator[tuple[Path, pa.RecordBatch]]:
    """(input path, batch of [text, label]) for every input in turn, streamed."""
    check_inputs(source)
    for path in source.paths:
        try:
            for batch in _open_batches(path):
                _check_columns(source, path, batch.schema.names)
                yield path, batch.select(source.selected())
        except (pa.ArrowInvalid, pa.ArrowTypeError, OSError, json.JSONDecodeError, KeyError) as exc:
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise UserError(f"{source.field}: cannot read {path}: {first}") from None


def _open_batches(path: Path) -> Iterator[pa.RecordBatch]:
    if path.is_dir():
        return _hf_dataset_batches(path)
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json", ".ndjson"):
        options = pajson.ReadOptions(block_size=READ_BLOCK_BYTES)
        return iter(pajson.open_json(path, read_options=options))
    if suffix in (".csv", ".tsv"):
        parse = pacsv.ParseOptions(delimiter="\t" if suffix == ".tsv" else ",")
        return iter(pacsv.open_csv(path, parse_options=parse))
    if suffix in (".parquet", ".pq"):
        return pq.ParquetFile(path).iter_batches(batch_size=8192)
    raise OSError(
        f"unsupported file type {suffix!r} (use .jsonl, .csv, .tsv, .parquet or a datasets directory)"
    )


def _is_hf_dataset_dir(path: Path) -> bool:
    return (path / "state.json").is_file()


def _data_files(path: Path) -> list[Path]:
    if not path.is_dir():
        return [path]
    state = json.loads((path / "state.json").read_text())
    return [path / entry["filename"] for entry in state["_data_files"]]


def _hf_dataset_batches(path: Path) -> Iterator[pa.RecordBatch]:
    # `save_to_disk` writes Arrow IPC *stream* files listed in state.json.
    for file in _data_files(path):
        with pa.memory_map(str(file)) as source:
            yield from pa.ipc.open_stream(source)


def _check_columns(source: SplitSource, path: Path, names: list[str]) -> None:
    for column in source.columns:
        if column not in names:
            raise UserError(
                f"{source.field}: {path} has no column {column!r}; columns: {', '.join(names)}"
            )
    if source.columns:
        return
    for kind, column in (("text", source.text_column), ("label", source.label_column)):
        if column not in names:
            raise UserError(
                f"{source.field}: {path} has no column {column!r} (data.{kind}_column); "
                f"columns: {', '.join(names)}"
            )


def label_strings(column: pa.Array, source: SplitSource, path: Path) -> list[str]:
    """Labels are strings or integers; both are kept as their string form in the label map."""
    kind = column.type
    if not (
        pa.types.is_integer(kind) or pa.types.is_string(kind) or pa.types.is_large_string(kind)
    ):
        raise UserError(
            f"{source.field}: label column {source.label_column!r} in {path} must hold strings or "
            f"integers, found {kind}"
        )
    if column.null_count:
        raise UserError(
            f"{source.field}: {path} has empty values in label column {source.label_column!r}"
        )
    return [str(v) for v in column.to_pylist()]


def known_label_names(source: SplitSource, digests: InputDigests) -> list[str]:
    """`collect_label_names`, remembered per input content and columns: a parse of every row
    only the first time these inputs are seen."""
    key = json.dumps([source_fingerprint(source, digests), source.selected()])
    names = digests.labels(key)
    if names is None:
        names = collect_label_names(source)
        digests.remember_labels(key, names)
    return names


def collect_label_names(source: SplitSource) -> list[str]:
    """The label set of a (train) split, in a stable order (numeric if all labels are integers)."""
    seen: set[str] = set()
    rows = 0
    for path, batch in iter_source_batches(source):
        seen.update(label_strings(batch.column(1), source, path))
        rows += batch.num_rows
    if rows == 0:
        raise UserError(f"{source.field}: no rows in {source.describe()}")
    if len(seen) < 2:
        raise UserError(
            f"{source.field}: {source.describe()} has {len(seen)} distinct label(s); need at least 2"
        )
    all_ints = all(s.lstrip("-").isdigit() for s in seen)
    return sorted(seen, key=int) if all_ints else sorted(seen)
