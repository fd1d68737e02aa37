"""Shared fixtures. Everything is local: HF_HUB_OFFLINE is forced so nothing downloads."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

from cluster.auth.secrets import unlisted_secret_names

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"
# Hermetic: the developer's credentials (HF_TOKEN, AWS_*, ...) never reach a test's runs (they
# would be warned about on stderr, and could end up in logs); tests plant their own.
for _name in unlisted_secret_names(os.environ, []):
    del os.environ[_name]
# Checkpoint signing secrets (trainer/formats/signing.py) of this session, not the user's.
STATE_HOME = tempfile.mkdtemp(prefix="ftl-test-state-")
os.environ["XDG_STATE_HOME"] = STATE_HOME

REPO_ROOT = Path(__file__).resolve().parents[1]


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    shutil.rmtree(STATE_HOME, ignore_errors=True)


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
