"""Checkpoints in S3 (`output.checkpoint_uri`), against a real local S3 server (moto in server
mode, on loopback): a 2-worker run writes its checkpoints straight to the bucket; rank 1 is
killed with SIGKILL inside a save (proven by that save's objects present without COMPLETE, and
the restart discarding them); the restarted group resumes from the last complete checkpoint in
the store and finishes with the uninterrupted run's weights; `ftlaunch export` reads from the
store; a URI that cannot be written is refused before anything starts.

One moto server and one run are shared by every assertion (module-scoped).
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.fixtures import ftlaunch
from tests.integration.conftest import moto_s3
from tests.integration.runs import (
    TOTAL_STEPS,
    job_args,
    launched,
    live_records,
    rank_pid,
    records,
    wait_for,
    write_job,
)
from tests.integration.test_fault_tolerance import assert_same_final_weights
from trainer.formats.object_checkpoints import ObjectCheckpointStore

pytestmark = [pytest.mark.ray, pytest.mark.dist]

BUCKET = "ftl-ckpt"
CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A moto S3 server with an empty bucket; yields its host:port."""
    import pyarrow.fs as pafs

    with moto_s3(tmp_path_factory.mktemp("moto")) as endpoint:
        filesystem = pafs.S3FileSystem(
            access_key="testing",
            secret_key="testing",
            endpoint_override=endpoint,
            scheme="http",
            allow_bucket_creation=True,
        )
        filesystem.create_dir(BUCKET)
        yield endpoint


def uri_of(endpoint: str, bucket: str = BUCKET) -> str:
    return f"s3://{bucket}/runs/ckpt?endpoint_override={endpoint}&scheme=http"


def listing(endpoint: str) -> dict[str, set[str]]:
    """`step-N.<attempt>` prefix -> the names of its objects."""
    import pyarrow.fs as pafs

    filesystem = pafs.S3FileSystem(
        access_key="testing", secret_key="testing", endpoint_override=endpoint, scheme="http"
    )
    base = f"{BUCKET}/runs/ckpt"
    found: dict[str, set[str]] = {}
    selector = pafs.FileSelector(base, recursive=True, allow_not_found=True)
    for info in filesystem.get_file_info(selector):
        if info.type == pafs.FileType.File:
            prefix, _, name = info.path[len(base) + 1 :].partition("/")
            found.setdefault(prefix, set()).add(name)
    return found


def staging(endpoint: str) -> list[str]:
    """Prefixes a save is writing: objects there, no COMPLETE yet."""
    return [p for p, names in listing(endpoint).items() if "COMPLETE" not in names]


@dataclass
class KilledRun:
    out: Path
    job: Path
    args: list[str]
    killed_prefix: str
    restart: dict
    before: list[dict]


@pytest.fixture(scope="module")
def killed_run(
    tmp_path_factory: pytest.TempPathFactory, tiny_bert: Path, keyword_data: dict, s3: str
) -> KilledRun:
    """The 2-worker run with checkpoints in S3 in which rank 1 is killed during a save (the
    moment that save's first objects are listed without COMPLETE); a kill the scheduler delayed
    past the window is retried at the next save."""
    root = tmp_path_factory.mktemp("s3-checkpoints")
    out, job = root / "out", write_job(root, tiny_bert)
    args = [
        *job_args(keyword_data, out, 2),
        *("--set", f"output.checkpoint_uri={uri_of(s3)}"),
        *("--set", "cluster.secret_env=[AWS_ACCESS_KEY_ID,AWS_SECRET_ACCESS_KEY]"),
    ]
    with launched(job, args, root / "logs", env=CREDENTIALS) as run:
        wait_for(lambda: [p for p, n in listing(s3).items() if "COMPLETE" in n], run, 600,
                 "first commit", poll_s=0.05)  # fmt: skip
        for kills in range(1, 4):
            victim = rank_pid(out, run, rank=1)  # before the save: no lookup in the window
            found = wait_for(lambda: staging(s3), run, 300, "next save", poll_s=0.002)
            os.kill(victim, signal.SIGKILL)
            prefix = found[0]
            assert isinstance(prefix, str)
            restarted = wait_for(
                lambda n=kills: [r for r in live_records(out) if r["event"] == "start"][n:],
                run, 300, "restart", poll_s=0.1,
            )  # fmt: skip
            before = live_records(out)
            before = before[: before.index(restarted[0])]
            tag = prefix.split(".")[0]
            if not any(r["event"] == "committed" and r["tag"] == tag for r in before):
                assert run.wait(timeout=400) == 0, run.tail()
                return KilledRun(out, job, args, prefix, restarted[0], before)
        raise AssertionError("every kill missed its save window")


@pytest.mark.timeout(1200)
def test_a_rank_killed_during_a_save_to_s3_resumes_from_the_last_complete_one(
    killed_run: KilledRun, s3: str, uninterrupted, tiny_bert: Path, tmp_path: Path
) -> None:
    run = killed_run
    tag = run.killed_prefix.split(".")[0]
    # The cut save never got its marker: the head dropped it when the surviving rank reported its
    # failed save, or else the restart discarded its objects.
    if not any(r["event"] == "commit_failed" and r["tag"] == tag for r in run.before):
        assert run.restart["discarded_partial"] == [run.killed_prefix]
    committed_before = [r["tag"] for r in run.before if r["event"] == "committed"]
    commits = [r for r in records(run.out) if r["event"] == "committed"]
    assert commits and all(r["stored_files"] > 0 and "streamed_files" not in r for r in commits)
    resumed = [r for r in records(run.out) if r["event"] == "resumed"]
    assert resumed[-1]["tag"] == committed_before[-1] != tag  # the previous complete checkpoint
    assert resumed[-1]["step"] == int(committed_before[-1].removeprefix("step-"))
    assert json.loads((run.out / "summary.json").read_text())["steps"] == TOTAL_STEPS
    # Checkpoints are only in the store: keep_last complete ones, nothing left half-written.
    assert not (run.out / "checkpoints").exists() or not any((run.out / "checkpoints").iterdir())
    kept = listing(s3)
    assert sorted(p.split(".")[0] for p in kept) == ["step-36", "step-48"]
    assert all({"COMPLETE", "manifest.json", "manifest.sig"} <= names for names in kept.values())
    # The final weights, read back from the store, are the uninterrupted run's.
    downloaded = tmp_path / "from-store"
    ObjectCheckpointStore(uri_of(s3)).download_checkpoint(
        f"step-{TOTAL_STEPS}", downloaded / "checkpoints" / f"step-{TOTAL_STEPS}"
    )
    assert_same_final_weights(downloaded, uninterrupted(2).out, tiny_bert)


@pytest.mark.timeout(600)
def test_export_reads_the_checkpoint_from_s3(killed_run: KilledRun, tmp_path: Path) -> None:
    exported = tmp_path / "exported"
    result = ftlaunch("export", str(killed_run.out), "--out", str(exported), env=CREDENTIALS)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "exported step-48" in result.stdout and "reload verified" in result.stdout
    assert (exported / "model.safetensors").stat().st_size > 0
    assert not (killed_run.out / ".export-checkpoint").exists()  # the downloaded copy is gone


@pytest.mark.timeout(120)
def test_a_checkpoint_uri_that_cannot_be_written_exits_2_before_anything_starts(
    tiny_bert: Path, keyword_data: dict, s3: str, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    job = write_job(tmp_path, tiny_bert)
    args = [
        *job_args(keyword_data, out, 2),
        *("--set", f"output.checkpoint_uri={uri_of(s3, bucket='no-such-bucket')}"),
        *("--set", "cluster.secret_env=[AWS_ACCESS_KEY_ID,AWS_SECRET_ACCESS_KEY]"),
    ]
    result = ftlaunch("run", str(job), *args, env=CREDENTIALS, timeout=100)
    assert result.returncode == 2, result.stdout[-3000:] + result.stderr[-3000:]
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(
        "error: output.checkpoint_uri: cannot write to s3://no-such-bucket/runs/ckpt: "
    )
    assert "Traceback" not in result.stderr and "endpoint_override" not in line
    assert not out.exists()  # nothing claimed, prepared or started
    # A bucket that went away later is an error when checkpoints are listed, never "none".
    store = ObjectCheckpointStore(uri_of(s3, bucket="no-such-bucket"))
    with pytest.raises(FileNotFoundError, match="no-such-bucket"):
        store.complete()
    empty = ObjectCheckpointStore(f"s3://{BUCKET}/empty?endpoint_override={s3}&scheme=http")
    assert empty.complete() == []  # a prefix with nothing yet, in a bucket that exists
