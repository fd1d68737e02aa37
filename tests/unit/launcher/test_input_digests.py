"""The verified-input cache: an unchanged raw input is neither hashed nor parsed again, a changed
one always is (even with its size and mtime put back), and a broken cache file costs only a
hashing pass."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from launcher.data.digests import CACHE_FILE, InputDigests
from launcher.data.sources import SplitSource, known_label_names, source_fingerprint
from tests.fixtures import keyword_rows, write_jsonl


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_an_unchanged_file_is_not_hashed_again(tmp_path: Path) -> None:
    data = write_jsonl(tmp_path / "train.jsonl", keyword_rows(50, 0))
    first = InputDigests(tmp_path / "cache")
    assert first.sha256(data) == _sha(data) and first.hashed == 1
    first.save()
    again = InputDigests(tmp_path / "cache")  # a later run: read back from disk
    assert again.sha256(data) == _sha(data) and again.hashed == 0


def test_a_rewrite_with_size_and_mtime_put_back_is_hashed_again(tmp_path: Path) -> None:
    data = write_jsonl(tmp_path / "train.jsonl", keyword_rows(50, 0))
    before = data.stat()
    digests = InputDigests(tmp_path / "cache")
    old = digests.sha256(data)
    raw = bytearray(data.read_bytes())
    raw[10] ^= 0x01  # same size
    data.write_bytes(bytes(raw))
    os.utime(data, ns=(before.st_atime_ns, before.st_mtime_ns))  # what `cp -p` / `rsync -t` do
    assert data.stat().st_size == before.st_size and data.stat().st_mtime_ns == before.st_mtime_ns
    new = digests.sha256(data)
    assert new == _sha(data) != old and digests.hashed == 2


def test_a_broken_cache_file_is_ignored_and_rewritten(tmp_path: Path) -> None:
    data = write_jsonl(tmp_path / "train.jsonl", keyword_rows(20, 0))
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / CACHE_FILE).write_text('{"files": {"' + str(data) + '": {"stamp": 1, "sha256": 5}')
    digests = InputDigests(cache)
    assert digests.sha256(data) == _sha(data) and digests.hashed == 1
    digests.save()
    assert json.loads((cache / CACHE_FILE).read_text())["files"][str(data.resolve())]["sha256"] == (
        _sha(data)
    )


def test_label_names_and_fingerprint_come_from_the_cache_on_a_later_run(tmp_path: Path) -> None:
    data = write_jsonl(tmp_path / "train.jsonl", keyword_rows(40, 0))
    source = SplitSource.single("data.train", data, "text", "label")
    first = InputDigests(tmp_path / "cache")
    assert known_label_names(source, first) == ["neg", "pos"]
    fingerprint = source_fingerprint(source)  # reference: every byte hashed
    first.save()
    later = InputDigests(tmp_path / "cache")
    assert source_fingerprint(source, later) == fingerprint
    assert known_label_names(source, later) == ["neg", "pos"] and later.hashed == 0
    write_jsonl(data, [{"text": "x", "label": "a"}, {"text": "y", "label": "b"}])
    assert known_label_names(source, later) == ["a", "b"] and later.hashed == 1
