"""Hub ids and hf:// datasets resolved offline through a Hugging Face cache that the test lays
out itself (models--org--name/{refs,snapshots}), and data.validation_split carved from a Hub
train split: seeded, stratified, every row in exactly one part."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console

from launcher.commands.run import prepare_splits
from launcher.data.carve import held_out_rows
from launcher.errors import UserError
from launcher.hub import resolve_hub_dataset
from launcher.models import resolve_model_path
from tests.fixtures import keyword_rows, minilm_dir
from trainer.config import JobConfig
from trainer.formats.shards import ShardManifest

SHA = "0123456789abcdef0123456789abcdef01234567"
SHA_V1 = "89abcdef0123456789abcdef0123456789abcdef"


def cache_repo(
    cache: Path, kind: str, repo: str, files: dict[str, str], ref: str = "main", sha: str = SHA
) -> Path:
    """One repository in the hub cache layout: refs/<ref> names the snapshot holding `files`."""
    folder = cache / f"{kind}s--{repo.replace('/', '--')}"
    snapshot = folder / "snapshots" / sha
    for name, text in files.items():
        (snapshot / name).parent.mkdir(parents=True, exist_ok=True)
        (snapshot / name).write_text(text)
    (folder / "refs").mkdir(parents=True, exist_ok=True)
    (folder / "refs" / ref).write_text(sha)
    return snapshot


@pytest.fixture
def hub_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    from huggingface_hub import constants

    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cache


def model_files() -> dict[str, str]:
    source = minilm_dir()
    return {
        "config.json": (source / "config.json").read_text(),
        "tokenizer.json": (source / "tokenizer.json").read_text(),
        "tokenizer_config.json": (source / "tokenizer_config.json").read_text(),
    }


def test_model_ids_resolve_to_cached_snapshots(
    hub_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    main = cache_repo(hub_cache, "model", "acme/tiny-bert", model_files())
    v1 = cache_repo(hub_cache, "model", "acme/tiny-bert", model_files(), ref="v1", sha=SHA_V1)
    assert resolve_model_path("acme/tiny-bert") == main
    assert resolve_model_path("acme/tiny-bert@v1") == v1
    with pytest.raises(UserError) as missing:
        resolve_model_path("acme/absent")
    (line,) = missing.value.messages
    assert line.startswith("model.path: no local directory ")
    assert "and model acme/absent is not in the Hugging Face cache" in line
    # A local directory of that name wins over the Hub id.
    local = tmp_path / "work" / "acme" / "tiny-bert"
    shutil.copytree(minilm_dir(), local)
    monkeypatch.chdir(tmp_path / "work")
    assert resolve_model_path("acme/tiny-bert") == local


def test_hub_datasets_resolve_their_split_files(hub_cache: Path) -> None:
    root = cache_repo(
        hub_cache,
        "dataset",
        "acme/reviews",
        {
            "data/train-00000-of-00002.jsonl": "{}\n",
            "data/train-00001-of-00002.jsonl": "{}\n",
            "data/test-00000-of-00001.jsonl": "{}\n",
            "README.md": "# reviews\n",
        },
    )
    train = resolve_hub_dataset("hf://acme/reviews", "data.train")
    assert [p.relative_to(root).as_posix() for p in train] == [
        "data/train-00000-of-00002.jsonl",
        "data/train-00001-of-00002.jsonl",
    ]
    assert resolve_hub_dataset("hf://datasets/acme/reviews:test", "data.test") == (
        root / "data/test-00000-of-00001.jsonl",
    )
    with pytest.raises(
        UserError,
        match=r"data.validation: hf://acme/reviews:validation has no data file for split 'validation' \(files: data/test",
    ):
        resolve_hub_dataset("hf://acme/reviews:validation", "data.validation")
    with pytest.raises(UserError, match="not of the form"):
        resolve_hub_dataset("hf://nope", "data.train")


def test_validation_split_is_seeded_and_stratified() -> None:
    groups = np.array(["a"] * 100 + ["b"] * 20, dtype=object)
    held = held_out_rows(groups, 0.1, seed=3)
    assert held[:100].sum() == 10 and held[100:].sum() == 2  # each label keeps its share
    assert np.array_equal(held, held_out_rows(groups, 0.1, seed=3))
    assert not np.array_equal(held, held_out_rows(groups, 0.1, seed=4))
    tiny = held_out_rows(np.zeros(3, dtype=np.int8), 0.1, seed=0)
    assert tiny.sum() == 1  # rounding to nothing still holds one row out


def test_hub_train_split_is_carved_into_validation(hub_cache: Path, tmp_path: Path) -> None:
    rows = keyword_rows(80, seed=5)
    lines = "".join(json.dumps(r) + "\n" for r in rows)
    test_lines = "".join(json.dumps(r) + "\n" for r in keyword_rows(20, seed=6))
    cache_repo(hub_cache, "dataset", "acme/kw", {"train.jsonl": lines, "test.jsonl": test_lines})
    model = cache_repo(hub_cache, "model", "acme/tiny-bert", model_files())
    job = JobConfig.model_validate(
        {
            "model": {"path": "acme/tiny-bert"},
            "data": {
                "train": "hf://acme/kw",
                "validation_split": 0.25,
                "test": "hf://acme/kw:test",
                "cache_dir": str(tmp_path / "cache"),
                "max_length": 32,
            },
            "training": {"seed": 1},
        }
    )
    labels, locations, train_rows = prepare_splits(job, model, Console(file=io.StringIO()))
    validation = ShardManifest.read(Path(locations["validation"]))
    assert labels == ["neg", "pos"]
    assert validation.total_rows == 20 and train_rows == 60
    expected = [sum(r["label"] == name for r in rows) for name in labels]
    held = validation.label_counts
    assert [round(0.25 * n) for n in expected] == held  # stratified by label
    again = prepare_splits(job, model, Console(file=io.StringIO()))[1]
    assert again == locations  # carved parts and their shards are reused from the cache


def test_validation_and_validation_split_are_exclusive() -> None:
    base = {"model": {"path": "m"}, "data": {"train": "a", "test": "c"}}
    with pytest.raises(ValueError, match=r"data\.validation: required field is missing"):
        JobConfig.model_validate(base)
    both = base | {"data": {"train": "a", "validation": "b", "validation_split": 0.1, "test": "c"}}
    with pytest.raises(ValueError, match=r"data\.validation_split: data\.validation is given too"):
        JobConfig.model_validate(both)
