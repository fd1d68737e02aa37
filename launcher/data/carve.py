"""`data.validation_split`: hold out a share of the raw train rows as the validation split.

The decision (which rows) is a pure function of the labels, the share and the seed; the shell
around it streams the train source twice (labels, then rows) and writes both parts as Parquet
into the cache, keyed by the source's content, so a second run reuses them and the tokenized
shards of each part are cached like any other split.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from launcher.data.digests import InputDigests
from launcher.data.sources import SplitSource, iter_source_batches, source_fingerprint
from launcher.errors import UserError

CARVED_DIR = "carved"
PARTS = ("train", "validation")


def held_out_rows(groups: np.ndarray, share: float, seed: int) -> np.ndarray:
    """Boolean mask of the rows held out: `share` of each group (rounded, so every group keeps
    its proportion; stratified when groups are labels), chosen by a seeded permutation.

    At least one row is held out and at least one kept, whatever the rounding.
    """
    rng = np.random.default_rng(seed)
    held = np.zeros(len(groups), dtype=bool)
    for group in np.unique(groups):
        members = np.flatnonzero(groups == group)
        take = round(share * len(members))
        held[rng.permutation(members)[:take]] = True
    if len(groups) >= 2 and not held.any():
        held[rng.integers(len(groups))] = True
    if held.all():
        held[np.flatnonzero(held)[0]] = False
    return held


def carve_validation(
    source: SplitSource,
    share: float,
    seed: int,
    stratify: bool,
    cache_root: Path,
    digests: InputDigests | None = None,
) -> tuple[SplitSource, SplitSource]:
    """(train part, validation part) of `source`, written once into the cache (`digests`: file
    digests known from earlier runs).

    Raises:
        UserError: unreadable source, or fewer than two rows.
    """
    key = json.dumps(
        [source_fingerprint(source, digests), share, seed, stratify, source.selected()]
    )
    out = cache_root / CARVED_DIR / hashlib.sha256(key.encode()).hexdigest()[:24]
    paths = {part: out / f"{part}.parquet" for part in PARTS}
    if not all(p.is_file() for p in paths.values()):
        groups = _row_groups(source, stratify)
        if len(groups) < 2:
            raise UserError(f"{source.field}: data.validation_split needs at least 2 rows")
        _write_parts(source, held_out_rows(groups, share, seed), paths)
    return (
        SplitSource(
            source.field, (paths["train"],), source.text_column, source.label_column, source.columns
        ),
        SplitSource(
            "data.validation_split",
            (paths["validation"],),
            source.text_column,
            source.label_column,
            source.columns,
        ),
    )


def _row_groups(source: SplitSource, stratify: bool) -> np.ndarray:
    """The label of every row (stratified), or one group for all rows."""
    parts = []
    for _, batch in iter_source_batches(source):
        if stratify:
            parts.append(np.asarray(batch.column(1).cast(pa.string()).to_pylist(), dtype=object))
        else:
            parts.append(np.zeros(batch.num_rows, dtype=np.int8))
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int8)


def _write_parts(source: SplitSource, held: np.ndarray, paths: dict[str, Path]) -> None:
    """Stream the rows again into the two Parquet files (temporary names, then renamed)."""
    next(iter(paths.values())).parent.mkdir(parents=True, exist_ok=True)
    writers: dict[str, pq.ParquetWriter] = {}
    temporary = {
        part: path.with_name(f".{path.name}.{os.getpid()}.tmp") for part, path in paths.items()
    }
    start = 0
    try:
        for _, batch in iter_source_batches(source):
            mask = held[start : start + batch.num_rows]
            start += batch.num_rows
            for part, rows in (
                ("validation", batch.filter(pa.array(mask))),
                ("train", batch.filter(pa.array(~mask))),
            ):
                if part not in writers:
                    writers[part] = pq.ParquetWriter(temporary[part], rows.schema)
                writers[part].write_batch(rows.cast(writers[part].schema))
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise UserError(
            f"{source.field}: rows of {source.describe()} differ in type ({exc})"
        ) from None
    finally:
        for writer in writers.values():
            writer.close()
    for part, path in paths.items():
        os.replace(temporary[part], path)
