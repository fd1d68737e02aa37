"""Use an already prepared split (a directory or a pyarrow.fs URI holding manifest.json + shards)
after checking it fits this job: readable manifest of a known version, same tokenizer, same
labels, not empty, and (for local shards) every shard there at its listed size, before any worker
starts. The shards' sha256 are checked where they are read, each before its first rows are used
(trainer/formats/shard_stores.py): a full hashing pass here would delay every run by a read of
the whole dataset."""

from __future__ import annotations

from pathlib import Path

from launcher.data.tokenize import tokenizer_fingerprint
from launcher.errors import UserError
from trainer.formats.shards import (
    MANIFEST_NAME,
    ShardManifest,
    check_shard_sizes,
    is_remote_uri,
    read_manifest_uri,
)


def load_prepared(field: str, location: str) -> ShardManifest | None:
    """The manifest if `location` is a prepared split; None for a raw data file.

    Raises:
        UserError: an unreadable manifest, an unknown format version, or an unreachable URI.
    """
    try:
        if is_remote_uri(location):
            return read_manifest_uri(location)
        directory = Path(location).expanduser()
        if not (directory / MANIFEST_NAME).is_file():
            return None
        return ShardManifest.read(directory)
    except (ValueError, OSError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UserError(f"{field}: {first}") from None


def check_prepared(
    field: str, location: str, manifest: ShardManifest, model_dir: Path, label_names: list[str]
) -> None:
    """Raises UserError naming `field` and the file if the prepared split does not fit this job."""
    if manifest.total_rows == 0:
        raise UserError(f"{field}: {location} is an empty split (0 rows)")
    expected = tokenizer_fingerprint(model_dir, manifest.max_length)
    if manifest.tokenizer_fingerprint != expected:
        raise UserError(
            f"{field}: {location}/{MANIFEST_NAME} was tokenized with a different tokenizer than "
            f"model.path {model_dir} (fingerprint {manifest.tokenizer_fingerprint[:12]} != {expected[:12]}); "
            "prepare it again with --tokenizer pointing at this model"
        )
    if manifest.label_names != label_names:
        raise UserError(
            f"{field}: {location} has labels {manifest.label_names}, but data.train has {label_names}; "
            "prepare it with --labels-from the train split"
        )
    if not is_remote_uri(location):  # remote shards are checked by each worker at first read
        check_local_shards(field, Path(location).expanduser(), manifest)


def check_local_shards(field: str, directory: Path, manifest: ShardManifest) -> None:
    """Raises UserError naming `field` and the file if a shard is missing or truncated."""
    try:
        check_shard_sizes(directory, manifest)
    except ValueError as exc:
        raise UserError(f"{field}: {exc}") from None
