"""Hugging Face Hub ids in a job file, resolved on the head through the Hugging Face cache.

`model.path: org/name[@revision]` and `data.*: hf://org/name[@revision][:split]` become local
directories here, before anything is planned: downloaded into the cache when the Hub is
reachable, read from the cache alone when it is not or when HF_HUB_OFFLINE=1. From then on they
are ordinary local paths: the workers receive the resolved directory as `model_dir` (or the
tokenized shards), so nodes never need Hub access or credentials.
"""

from __future__ import annotations

import re
from pathlib import Path

from launcher.errors import UserError

HUB_DATASET_PREFIX = "hf://"
# org/name with Hub-legal characters, optionally @revision (branch, tag or commit).
HUB_ID = re.compile(r"(?P<repo>[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*)(?:@(?P<revision>[\w./-]+))?")
DATASET_URI = re.compile(
    r"hf://(?:datasets/)?(?P<repo>[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*)"
    r"(?:@(?P<revision>[\w.-]+))?(?::(?P<split>[\w.-]+))?"
)
# What a model needs on the head and the workers: configs, tokenizer files, safetensors weights;
# not the .bin/.h5/.msgpack/onnx copies many repositories also carry.
MODEL_FILES = ["*.json", "*.safetensors", "*.txt", "*.model", "*.jinja", "*.tiktoken"]
DATA_SUFFIXES = (".jsonl", ".json", ".ndjson", ".csv", ".tsv", ".parquet", ".pq")


def parse_model_id(text: str) -> tuple[str, str | None] | None:
    """`org/name@rev` -> (repo, revision); None if `text` is not shaped like a Hub id."""
    match = HUB_ID.fullmatch(text)
    return (match["repo"], match["revision"]) if match else None


def is_hub_dataset(location: str | None) -> bool:
    return bool(location) and str(location).startswith(HUB_DATASET_PREFIX)


def resolve_hub_model(text: str, field: str) -> Path:
    """The cached snapshot directory of a Hub model id.

    Raises:
        UserError: not an id, not cached while offline, unknown repository or revision.
    """
    parsed = parse_model_id(text)
    if parsed is None:
        raise UserError(f"{field}: {text!r} is neither a directory nor a Hub id org/name[@rev]")
    return snapshot(parsed[0], parsed[1], "model", field, MODEL_FILES)


def resolve_hub_dataset(location: str, field: str) -> tuple[Path, ...]:
    """The data files of one split of a Hub dataset, from its cached snapshot.

    A file belongs to split S when S is a whole word of its path inside the repository
    (`train.jsonl`, `data/train-00000-of-00001.parquet`, `train/part-0.csv`), the layouts the
    Hub's own dataset viewer recognises.

    Raises:
        UserError: a malformed URI, a dataset not available, or no file for the split.
    """
    match = DATASET_URI.fullmatch(location)
    if match is None:
        raise UserError(
            f"{field}: {location!r} is not of the form hf://org/name[@revision][:split]"
        )
    split = match["split"] or "train"
    root = snapshot(match["repo"], match["revision"], "dataset", field, None)
    files = split_files(root, split)
    if not files:
        found = sorted(str(p.relative_to(root)) for p in data_files(root))
        raise UserError(
            f"{field}: {location} has no data file for split {split!r} "
            f"(files: {', '.join(found[:8]) or 'none'})"
        )
    return files


def data_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in DATA_SUFFIXES)


def split_files(root: Path, split: str) -> tuple[Path, ...]:
    word = re.compile(rf"(^|[/_.-]){re.escape(split)}([/_.-]|$)")
    return tuple(p for p in data_files(root) if word.search(str(p.relative_to(root))))


def snapshot(
    repo: str, revision: str | None, kind: str, field: str, patterns: list[str] | None
) -> Path:
    """`huggingface_hub.snapshot_download`, which returns the cached snapshot without network
    when HF_HUB_OFFLINE=1 (or when the Hub cannot be reached and the snapshot is complete).

    Raises:
        UserError: one line saying what is missing and how to get it.
    """
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    name = f"{repo}@{revision}" if revision else repo
    try:
        return Path(
            snapshot_download(repo, revision=revision, repo_type=kind, allow_patterns=patterns)
        )
    except LocalEntryNotFoundError:
        raise UserError(
            f"{field}: {kind} {name} is not in the Hugging Face cache and the Hub cannot be "
            "reached (HF_HUB_OFFLINE=1, or no network); download it on a machine with access "
            f"(huggingface-cli download {repo}{' --repo-type dataset' if kind == 'dataset' else ''}) "
            "and share HF_HOME"
        ) from None
    except GatedRepoError:
        raise UserError(
            f"{field}: {kind} {name} is gated; accept its terms on the Hub and set HF_TOKEN"
        ) from None
    except (RepositoryNotFoundError, RevisionNotFoundError) as exc:
        raise UserError(
            f"{field}: {kind} {name} not found on the Hub ({type(exc).__name__})"
        ) from None
    except (HfHubHTTPError, OSError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"{field}: cannot fetch {kind} {name}: {first}") from None
