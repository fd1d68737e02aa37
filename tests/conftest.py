"""Shared fixtures. Everything is local: HF_HUB_OFFLINE is forced so nothing downloads."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.fixtures import make_tiny_bert

    return make_tiny_bert(tmp_path_factory.mktemp("models") / "tiny-bert")


@pytest.fixture(scope="session")
def keyword_data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from tests.fixtures import make_keyword_dataset

    return make_keyword_dataset(tmp_path_factory.mktemp("data"))


@pytest.fixture()
def cache_dir(tmp_path: Path) -> Path:
    return tmp_path / "cache"
