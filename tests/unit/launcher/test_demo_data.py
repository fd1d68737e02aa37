"""The demo dataset generator: determinism, split shapes, label balance and split hygiene."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from launcher.data.demo import LABELS, main, write_demo_dataset

SIZES = {"n_train": 600, "n_validation": 100, "n_test": 150}


def read_rows(path: Path) -> list[dict[str, str]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def file_bytes(paths: dict[str, Path]) -> dict[str, bytes]:
    return {split: path.read_bytes() for split, path in paths.items()}


@pytest.fixture(scope="module")
def splits(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[dict[str, str]]]:
    paths = write_demo_dataset(tmp_path_factory.mktemp("demo"), seed=0, **SIZES)
    return {split: read_rows(path) for split, path in paths.items()}


def test_same_seed_gives_identical_bytes(tmp_path: Path) -> None:
    first = write_demo_dataset(tmp_path / "a", seed=3, **SIZES)
    second = write_demo_dataset(tmp_path / "b", seed=3, **SIZES)
    assert file_bytes(first) == file_bytes(second)


def test_different_seed_gives_different_data(tmp_path: Path) -> None:
    first = write_demo_dataset(tmp_path / "a", seed=0, **SIZES)
    second = write_demo_dataset(tmp_path / "b", seed=1, **SIZES)
    assert file_bytes(first)["train"] != file_bytes(second)["train"]


def test_rewriting_is_idempotent_and_leaves_no_temp_files(tmp_path: Path) -> None:
    first = file_bytes(write_demo_dataset(tmp_path, seed=0, **SIZES))
    second = file_bytes(write_demo_dataset(tmp_path, seed=0, **SIZES))
    assert first == second
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "test.jsonl",
        "train.jsonl",
        "validation.jsonl",
    ]


def test_returns_paths_per_split_and_creates_nested_dir(tmp_path: Path) -> None:
    out = tmp_path / "nested" / "demo"
    paths = write_demo_dataset(str(out), seed=0, n_train=30, n_validation=5, n_test=5)
    assert paths == {split: out / f"{split}.jsonl" for split in ("train", "validation", "test")}


def test_row_counts_match_requested_sizes(splits: dict[str, list[dict[str, str]]]) -> None:
    assert {split: len(rows) for split, rows in splits.items()} == {
        "train": SIZES["n_train"],
        "validation": SIZES["n_validation"],
        "test": SIZES["n_test"],
    }


def test_every_row_has_text_and_a_known_label(splits: dict[str, list[dict[str, str]]]) -> None:
    for rows in splits.values():
        for row in rows:
            assert set(row) == {"text", "label"}
            assert isinstance(row["text"], str) and row["text"].strip()
            assert row["label"] in LABELS
    assert {row["label"] for row in splits["train"]} == set(LABELS)


def test_no_text_is_shared_between_splits(splits: dict[str, list[dict[str, str]]]) -> None:
    train = {row["text"] for row in splits["train"]}
    for split in ("validation", "test"):
        assert not train & {row["text"] for row in splits[split]}
    assert len(train) == len(splits["train"])


def test_classes_are_roughly_balanced(splits: dict[str, list[dict[str, str]]]) -> None:
    counts = Counter(row["label"] for row in splits["train"])
    shares = {label: n / len(splits["train"]) for label, n in counts.items()}
    assert max(shares.values()) < 0.45
    assert min(shares.values()) > 0.2


def test_texts_have_demo_friendly_lengths(splits: dict[str, list[dict[str, str]]]) -> None:
    lengths = [len(row["text"].split()) for rows in splits.values() for row in rows]
    assert min(lengths) >= 8 and max(lengths) <= 40


def test_cli_prints_one_line_per_split(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--out", str(tmp_path), "--n-train", "20", "--n-validation", "4", "--n-test", "6"]
    assert main(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3
    assert lines[0].startswith("train:") and lines[0].endswith("(20 rows)")
    assert lines[2].startswith("test:") and lines[2].endswith("(6 rows)")
