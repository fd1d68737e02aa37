"""The model's way to a node that cannot see `model.path`, without Ray: the head's server serves
only its listing, the node's content-addressed cache fetches each file once, verifies it, and
is reused; a corrupted stream leaves nothing behind that looks complete."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cluster.head.model_server import ModelServer
from cluster.worker.model_cache import COMPLETE, ModelFetchError, local_model_dir
from trainer.formats.names import UnsafeNameError


class ServerSource:
    """The ModelSource a worker gets, reading straight from a ModelServer (no Ray)."""

    def __init__(self, server: ModelServer, corrupt: str | None = None) -> None:
        self.server = server
        self.corrupt = corrupt  # a file whose bytes arrive altered (the fault is in transit)

    def listing(self) -> dict[str, Any]:
        return self.server.listing()

    def chunks(self, name: str, size: int) -> Iterator[bytes]:
        for offset in range(0, size, 5):
            data = self.server.read(name, offset, 5)
            yield data[::-1] if name == self.corrupt else data


@pytest.fixture()
def model(tmp_path: Path) -> Path:
    directory = tmp_path / "head" / "model"
    (directory / "sub").mkdir(parents=True)
    (directory / "config.json").write_text('{"model_type": "bert"}')
    (directory / "model.safetensors").write_bytes(bytes(range(256)) * 3)
    (directory / "sub" / "tokenizer.json").write_text("{}")
    (directory / ".cache").mkdir()
    (directory / ".cache" / "secret").write_text("not part of the model")
    return directory


def test_a_node_without_the_model_gets_a_verified_copy_once(model: Path, tmp_path: Path) -> None:
    server = ModelServer(str(model))
    hidden = str(tmp_path / "not-on-this-node" / "model")  # where the head has it
    cache = tmp_path / "node-cache"
    local = local_model_dir(ServerSource(server), hidden, cache)
    assert local.parent == cache / "models" and (local / COMPLETE).is_file()
    for name in ("config.json", "model.safetensors", "sub/tokenizer.json"):
        assert (local / name).read_bytes() == (model / name).read_bytes()
    assert not (local / ".cache").exists()
    streamed = server.stats()["model_streamed_bytes"]
    assert streamed == sum(p.stat().st_size for p in (model / "config.json", model / "sub" / "tokenizer.json", model / "model.safetensors"))  # fmt: skip

    # Reused: a second run (another worker, a later job) streams nothing.
    assert local_model_dir(ServerSource(server), hidden, cache) == local
    assert server.stats()["model_streamed_bytes"] == streamed
    # A node that sees model.path uses it in place.
    assert local_model_dir(ServerSource(server), str(model), cache) == model


def test_workers_on_one_node_fetch_the_model_once(model: Path, tmp_path: Path) -> None:
    server = ModelServer(str(model))
    results: list[Path] = []
    workers = [
        threading.Thread(
            target=lambda: results.append(
                local_model_dir(ServerSource(server), "/nowhere/model", tmp_path / "cache")
            )
        )
        for _ in range(3)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=60)
    assert len(set(results)) == 1 and len(results) == 3
    assert server.stats()["model_streamed_bytes"] == sum(
        e["bytes"] for e in server.listing()["files"].values()
    )


def test_a_corrupted_stream_is_refused_and_leaves_no_complete_copy(
    model: Path, tmp_path: Path
) -> None:
    source = ServerSource(ModelServer(str(model)), corrupt="model.safetensors")
    with pytest.raises(ModelFetchError, match=r"model\.safetensors: the streamed copy does not"):
        local_model_dir(source, "/nowhere/model", tmp_path / "cache")
    models = tmp_path / "cache" / "models"
    assert not any((d / COMPLETE).exists() for d in models.iterdir() if d.is_dir())
    blobs = {p.name for p in (tmp_path / "cache" / "blobs").iterdir()}
    assert source.listing()["files"]["model.safetensors"]["sha256"] not in blobs


def test_the_server_serves_only_its_listing(model: Path) -> None:
    server = ModelServer(str(model))
    assert set(server.listing()["files"]) == {
        "config.json",
        "model.safetensors",
        "sub/tokenizer.json",
    }
    for name in (".cache/secret", "../model/config.json", "/etc/passwd", "sub"):
        with pytest.raises(KeyError, match="not a file of the model directory"):
            server.read(name, 0, 10)


def test_a_listed_name_that_escapes_the_cache_is_refused(model: Path, tmp_path: Path) -> None:
    source = ServerSource(ModelServer(str(model)))
    listing = source.listing()
    entry = listing["files"]["config.json"]
    source.listing = lambda: {"digest": "d" * 64, "files": {"../../escaped": entry}}  # type: ignore[method-assign]
    source.chunks = lambda name, size: iter([(model / "config.json").read_bytes()])  # type: ignore[method-assign]
    with pytest.raises(UnsafeNameError, match=r"\.\."):
        local_model_dir(source, "/nowhere/model", tmp_path / "cache")
    assert not (tmp_path / "cache" / "escaped").exists()
