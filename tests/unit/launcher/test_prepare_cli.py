"""`ftlaunch prepare` as a user runs it, and prepared splits handed to `ftlaunch run`:
deterministic, idempotent, atomic under kill, and every bad prepared input refused with exit 2."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pytest

from tests.fixtures import assert_user_error, ftlaunch, keyword_rows, minilm_dir, write_jsonl
from trainer.formats.shards import ShardManifest, verify_shards

TOKENIZER = str(minilm_dir())


def prepare(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return ftlaunch("prepare", *args, "--tokenizer", TOKENIZER, "--max-length", "32", cwd=cwd)


def shard_bytes(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


def test_prepare_is_deterministic_and_idempotent(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "train.jsonl", keyword_rows(3000, 0))
    first = prepare("train.jsonl", "--out", "a", "--shard-size", "40KB", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert "3,000 rows" in first.stdout and "written" in first.stdout
    assert (
        prepare("train.jsonl", "--out", "b", "--shard-size", "40KB", cwd=tmp_path).returncode == 0
    )
    assert shard_bytes(tmp_path / "a") == shard_bytes(tmp_path / "b")  # same input, same bytes
    manifest = ShardManifest.read(tmp_path / "a")
    assert len(manifest.shards) > 1 and manifest.total_rows == 3000
    stamp = (tmp_path / "a" / "manifest.json").stat().st_mtime_ns
    again = prepare("train.jsonl", "--out", "a", "--shard-size", "40KB", cwd=tmp_path)
    assert "up to date, nothing to do" in again.stdout
    assert (tmp_path / "a" / "manifest.json").stat().st_mtime_ns == stamp


def test_several_inputs_and_a_datasets_directory(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "part1.jsonl", keyword_rows(40, 1))
    rows = keyword_rows(25, 2)
    hf_dir = tmp_path / "hf"
    hf_dir.mkdir()
    with pa.OSFile(str(hf_dir / "data-00000-of-00001.arrow"), "wb") as sink:
        table = pa.Table.from_pylist(rows)
        with pa.ipc.new_stream(sink, table.schema) as writer:
            writer.write_table(table)
    (hf_dir / "state.json").write_text(
        json.dumps({"_data_files": [{"filename": "data-00000-of-00001.arrow"}]})
    )
    result = prepare("part1.jsonl", "hf", "--out", "both", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert ShardManifest.read(tmp_path / "both").total_rows == 65


def test_labels_from_reuses_the_train_label_map(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "train.jsonl", keyword_rows(30, 0))
    write_jsonl(tmp_path / "val.jsonl", [r for r in keyword_rows(30, 1) if r["label"] == "pos"])
    assert prepare("train.jsonl", "--out", "train", cwd=tmp_path).returncode == 0
    assert (
        prepare("val.jsonl", "--out", "val", "--labels-from", "train", cwd=tmp_path).returncode == 0
    )
    assert ShardManifest.read(tmp_path / "val").label_names == ["neg", "pos"]
    assert_user_error(prepare("val.jsonl", "--out", "v2", cwd=tmp_path), "has 1 distinct label(s)")


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["missing.jsonl", "--out", "o"], "inputs: file not found: missing.jsonl"),
        (["train.jsonl", "--out", "o", "--shard-size", "lots"], "--shard-size: cannot read 'lots'"),
        (
            ["train.jsonl", "--out", "o", "--text-column", "body"],
            "no column 'body' (data.text_column)",
        ),
        (
            ["train.jsonl", "--out", "o", "--labels-from", "train.jsonl"],
            "--labels-from: train.jsonl is not a prepared split",
        ),
    ],
)
def test_prepare_bad_inputs(tmp_path: Path, args: list[str], fragment: str) -> None:
    write_jsonl(tmp_path / "train.jsonl", keyword_rows(10, 0))
    assert_user_error(prepare(*args, cwd=tmp_path), fragment)
    assert not (tmp_path / "o").exists()


def test_prepare_never_replaces_a_folder_of_user_files(tmp_path: Path) -> None:
    data = tmp_path / "data"
    write_jsonl(data / "train.jsonl", keyword_rows(20, 0))
    (data / "notes.txt").write_text("mine")
    before = shard_bytes(data)
    assert_user_error(
        prepare("data/train.jsonl", "--out", "data", cwd=tmp_path),
        "--out: data holds 'notes.txt' and 1 more, which is not part of a prepared split",
    )
    assert shard_bytes(data) == before  # the input and the unrelated file are intact
    assert prepare("data/train.jsonl", "--out", "prepared", cwd=tmp_path).returncode == 0
    (tmp_path / "prepared" / "README").write_text("added by hand")
    assert_user_error(
        prepare("data/train.jsonl", "--out", "prepared", "--max-length", "16", cwd=tmp_path),
        "--out: prepared holds 'README', which is not part of a prepared split",
    )
    assert (tmp_path / "prepared" / "README").read_text() == "added by hand"


@pytest.mark.timeout(120)
def test_a_killed_prepare_never_publishes_partial_shards(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "small.jsonl", keyword_rows(50, 0))
    assert prepare("small.jsonl", "--out", "out", cwd=tmp_path).returncode == 0
    before = shard_bytes(tmp_path / "out")
    write_jsonl(tmp_path / "big.jsonl", keyword_rows(300_000, 1))
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "launcher.cli",
            "prepare",
            "big.jsonl",
            "--out",
            "out",
            "--tokenizer",
            TOKENIZER,
            "--shard-size",
            "100KB",
        ],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while not any(p.glob("shard-*.arrow") for p in tmp_path.glob(".out.tmp-*")):
        assert time.monotonic() < deadline and process.poll() is None, (
            "prepare never started writing"
        )
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    assert shard_bytes(tmp_path / "out") == before  # the previous result is intact and complete
    verify_shards(tmp_path / "out", ShardManifest.read(tmp_path / "out"))


@pytest.fixture()
def prepared_job(tmp_path: Path, tiny_bert: Path) -> Path:
    for name, seed in (("train", 0), ("validation", 1), ("test", 2)):
        write_jsonl(tmp_path / f"{name}.jsonl", keyword_rows(64, seed))
        labels = ["--labels-from", "p-train"] if name != "train" else []
        result = ftlaunch(
            "prepare",
            f"{name}.jsonl",
            "--out",
            f"p-{name}",
            "--tokenizer",
            str(tiny_bert),
            "--max-length",
            "32",
            *labels,
            cwd=tmp_path,
        )
        assert result.returncode == 0, result.stderr
    (tmp_path / "job.yaml").write_text(
        f"model: {{path: {tiny_bert}}}\ndata: {{train: p-train, validation: p-validation, test: p-test}}\n"
        "training: {micro_batch_size: 4}\noutput: {dir: out}\n"
    )
    return tmp_path


def test_run_refuses_a_truncated_prepared_shard_before_training(prepared_job: Path) -> None:
    # The launcher checks sizes only (a corrupted shard of the right size is refused by the
    # reader before its first rows are used: tests/integration/test_data_plane.py).
    shard = prepared_job / "p-validation" / "shard-00000.arrow"
    shard.write_bytes(shard.read_bytes()[:-7])
    result = ftlaunch("run", "job.yaml", cwd=prepared_job)
    assert_user_error(result, "data.validation:", "shard-00000.arrow: size")
    assert not (prepared_job / "out").exists()


def test_run_refuses_another_tokenizer(prepared_job: Path, tiny_bert: Path) -> None:
    other = prepared_job / "other-model"
    shutil.copytree(tiny_bert, other)
    config = json.loads((other / "tokenizer_config.json").read_text())
    (other / "tokenizer_config.json").write_text(json.dumps(config | {"do_lower_case": False}))
    result = ftlaunch("run", "job.yaml", "--set", f"model.path={other}", cwd=prepared_job)
    assert_user_error(
        result, "data.train:", "was tokenized with a different tokenizer than model.path"
    )


def test_run_refuses_an_unknown_manifest_version(prepared_job: Path) -> None:
    manifest = prepared_job / "p-test" / "manifest.json"
    manifest.write_text(json.dumps(json.loads(manifest.read_text()) | {"format_version": 7}))
    assert_user_error(
        ftlaunch("run", "job.yaml", cwd=prepared_job),
        "data.test:",
        "unknown manifest format_version 7",
    )


def test_run_refuses_mismatched_label_maps(prepared_job: Path) -> None:
    manifest = prepared_job / "p-test" / "manifest.json"
    manifest.write_text(
        json.dumps(json.loads(manifest.read_text()) | {"label_names": ["neg", "pos", "meh"]})
    )
    assert_user_error(ftlaunch("run", "job.yaml", cwd=prepared_job), "data.test:", "has labels")
