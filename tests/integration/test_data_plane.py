"""Where shards and the model live: only on the head (streamed to a node that cannot see them),
and, for shards, in S3 (a real local S3 server, moto in server mode, on loopback)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fixtures import ftlaunch
from tests.integration.conftest import cluster_env, moto_s3

pytestmark = [pytest.mark.ray, pytest.mark.dist]


def prepare_splits(data: dict[str, Path], model: Path, out: Path) -> dict[str, Path]:
    dirs = {}
    for name, path in data.items():
        target = out / name
        labels = ["--labels-from", str(dirs["train"])] if name != "train" else []
        result = ftlaunch(
            "prepare",
            str(path),
            "--tokenizer",
            str(model),
            "--out",
            str(target),
            "--max-length",
            "32",
            "--split",
            name,
            *labels,
            timeout=120,
        )
        assert result.returncode == 0, result.stderr
        dirs[name] = target
    return dirs


def hidden_model(tiny_bert: Path, tmp_path: Path) -> Path:
    """A copy of the model under `tmp_path`, which the second node of `private_mount_cluster`
    cannot see: a worker there gets it streamed from the head."""
    model = tmp_path / "model"
    shutil.copytree(tiny_bert, model)
    return model


def model_bytes(model: Path) -> int:
    return sum(p.stat().st_size for p in model.rglob("*") if p.is_file())


def job_args(splits: dict[str, str], out: Path) -> list[str]:
    sets = {f"data.{k}": v for k, v in splits.items()} | {
        "output.dir": str(out),
        "training.epochs": 12,
        "training.micro_batch_size": 16,
        "optim.lr": 0.002,
        "training.log_every": 8,
        "cluster.num_workers": 2,
    }
    return [a for k, v in sets.items() for a in ("--set", f"{k}={v}")]


@pytest.mark.timeout(600)
def test_shards_only_on_the_head_are_streamed_to_the_other_node(
    tmp_path: Path,
    tiny_bert: Path,
    keyword_data: dict[str, Path],
    private_mount_cluster: dict[str, str],
) -> None:
    splits = prepare_splits(keyword_data, tiny_bert, tmp_path / "prepared")  # hidden from node 2
    model = hidden_model(tiny_bert, tmp_path)
    job = tmp_path / "job.yaml"
    job.write_text(
        f"model: {{path: {model}, node_cache_dir: {tmp_path / 'node-cache'}}}\n"
        "data: {train: x, validation: y, test: z}\n"
    )
    env = cluster_env(private_mount_cluster)
    result = ftlaunch(
        "run",
        str(job),
        "--address",
        private_mount_cluster["address"],
        *job_args({k: str(v) for k, v in splits.items()}, tmp_path / "out"),
        env=env,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    # One of the two workers ran on the node that cannot see tmp_path: it read the shards through
    # the head, and got the model streamed, all of it, once.
    assert summary["head_streamed_blocks"] > 0 and summary["head_streamed_bytes"] > 0
    assert summary["model_streamed_bytes"] == model_bytes(model)
    assert not (tmp_path / "node-cache").exists()  # the head's rank read model.path in place
    # The plan's per-rank peak against the measured one (tiny model: mostly framework overhead).
    assert 0.8 <= summary["memory"]["ratio"] <= 1.2, summary["memory"]
    assert summary["test"]["accuracy"] > summary["majority_baseline_accuracy"] + 0.2
    assert (tmp_path / "out" / "model" / "model.safetensors").is_file()


@pytest.mark.timeout(600)
def test_a_corrupted_local_prepared_shard_is_refused_by_name(
    tmp_path: Path, tiny_bert: Path, keyword_data: dict[str, Path]
) -> None:
    # The launcher checks only sizes; the reader hashes each shard before its first rows are used.
    splits = prepare_splits(keyword_data, tiny_bert, tmp_path / "prepared")
    shard = splits["train"] / "shard-00000.arrow"
    raw = bytearray(shard.read_bytes())
    raw[len(raw) // 2] ^= 0xFF  # same size: only the sha256 can tell
    shard.write_bytes(bytes(raw))
    job = tmp_path / "job.yaml"
    job.write_text(f"model: {{path: {tiny_bert}}}\ndata: {{train: x, validation: y, test: z}}\n")
    out = tmp_path / "out"
    args = job_args({k: str(v) for k, v in splits.items()}, out)  # restarts allowed (default)
    result = ftlaunch("run", str(job), *args)
    assert result.returncode == 2, result.stdout[-3000:] + result.stderr[-3000:]
    (line,) = result.stderr.strip().splitlines()
    assert f"{shard}: sha256 does not match the manifest" in line and "Traceback" not in line
    assert not (out / "summary.json").exists()
    files = list(out.rglob("metrics.jsonl"))
    records = [json.loads(x) for f in files for x in f.read_text().splitlines()]
    assert not [r for r in records if r.get("event") == "train"]  # no step trained on it
    # The refusal ended the run: no restart trained again on the same bytes.
    assert [r["rank"] for r in records if r.get("event") == "input_error"]
    assert len([r for r in records if r.get("event") == "rank_start"]) <= 2  # one attempt


@pytest.fixture()
def s3_server(tmp_path: Path) -> Iterator[dict[str, str]]:
    env = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    with moto_s3(tmp_path) as endpoint:
        yield env | {"endpoint": endpoint}


def upload(local: Path, key: str, server: dict[str, str]) -> None:
    import pyarrow.fs as pafs

    filesystem = pafs.S3FileSystem(
        access_key=server["AWS_ACCESS_KEY_ID"],
        secret_key=server["AWS_SECRET_ACCESS_KEY"],
        endpoint_override=server["endpoint"],
        scheme="http",
        allow_bucket_creation=True,
    )
    filesystem.create_dir(key.split("/")[0])
    pafs.copy_files(str(local), key, destination_filesystem=filesystem)


@pytest.mark.timeout(600)
def test_training_from_s3_and_a_corrupted_remote_shard_is_refused(
    tmp_path: Path, tiny_bert: Path, keyword_data: dict[str, Path], s3_server: dict[str, str]
) -> None:
    splits = prepare_splits(keyword_data, tiny_bert, tmp_path / "prepared")
    query = f"?endpoint_override={s3_server['endpoint']}&scheme=http"
    uris = {}
    for name, directory in splits.items():
        uris[name] = f"s3://ftl-data/{name}{query}"
        upload(directory, f"ftl-data/{name}", s3_server)
    shutil.rmtree(tmp_path / "prepared")  # nothing local left: the data is only in S3
    job = tmp_path / "job.yaml"
    job.write_text(f"model: {{path: {tiny_bert}}}\ndata: {{train: x, validation: y, test: z}}\n")
    env = {k: v for k, v in s3_server.items() if k.startswith("AWS_")}
    # the workers read S3 with the credentials the job passes them (sealed, like any secret)
    secrets = ["--set", "cluster.secret_env=[AWS_ACCESS_KEY_ID,AWS_SECRET_ACCESS_KEY]"]
    result = ftlaunch("run", str(job), *job_args(uris, tmp_path / "out"), *secrets, env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["test"]["accuracy"] > summary["majority_baseline_accuracy"] + 0.2

    # Flip bytes of the remote train shard: the first worker read fails, naming the object.
    import pyarrow.fs as pafs

    with pytest.MonkeyPatch.context() as patch:  # credentials for this process, only here
        for name, value in env.items():
            patch.setenv(name, value)
        filesystem, root = pafs.FileSystem.from_uri(uris["train"])
    with filesystem.open_input_stream(f"{root}/shard-00000.arrow") as fh:
        raw = bytearray(fh.read())
    raw[200] ^= 0xFF
    with filesystem.open_output_stream(f"{root}/shard-00000.arrow") as fh:
        fh.write(bytes(raw))
    result = ftlaunch("run", str(job), *job_args(uris, tmp_path / "out2"), *secrets, env=env)
    assert result.returncode == 2, result.stderr[-3000:]
    (line,) = result.stderr.strip().splitlines()
    assert (
        "shard-00000.arrow: sha256 does not match the manifest" in line and "Traceback" not in line
    )
    assert not (tmp_path / "out2" / "summary.json").exists()


@pytest.mark.timeout(600)
def test_checkpoints_from_the_other_node_arrive_on_the_head_and_resume_there(
    tmp_path: Path,
    tiny_bert: Path,
    keyword_data: dict[str, Path],
    private_mount_cluster: dict[str, str],
) -> None:
    splits = prepare_splits(keyword_data, tiny_bert, tmp_path / "prepared")
    model = hidden_model(tiny_bert, tmp_path)
    job = tmp_path / "job.yaml"
    job.write_text(
        f"model: {{path: {model}, node_cache_dir: {tmp_path / 'node-cache'}}}\n"
        "data: {train: x, validation: y, test: z}\n"
    )
    out = tmp_path / "out"
    args = [
        *job_args({k: str(v) for k, v in splits.items()}, out),
        "--set",
        "training.checkpoint_every=8",
        "--set",
        "training.epochs=4",
        "--address",
        private_mount_cluster["address"],
    ]
    env = cluster_env(private_mount_cluster)
    first = ftlaunch("run", str(job), *args, env=env)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert json.loads((out / "summary.json").read_text())["model_streamed_bytes"] == model_bytes(
        model
    )
    newest = max((out / "checkpoints").glob("step-*"), key=lambda p: int(p.name.split("-")[1]))
    manifest = json.loads((newest / "manifest.json").read_text())
    # Both ranks' ZeRO shards and states are on the head, whichever node each rank ran on.
    for rank in (0, 1):
        assert any(f"zero_pp_rank_{rank}_" in name for name in manifest["files"])
        assert f"trainer_state_rank{rank}.json" in manifest["files"]
    assert (newest / "COMPLETE").is_file()
    # The other node's rank sent its part over the TCP stream; the head's rank wrote in place.
    committed = [
        json.loads(line)
        for line in (out / "metrics.jsonl").read_text().splitlines()
        if '"committed"' in line
    ]
    newest_commit = next(r for r in committed if r["tag"] == newest.name)
    total = sum(entry["bytes"] for entry in manifest["files"].values())
    assert newest_commit["streamed_files"] > 0
    assert 0 < newest_commit["streamed_bytes"] < total

    resumed = ftlaunch("run", str(job), *args, "--set", "training.epochs=6", "--resume", env=env)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["event"] == "resumed"] == [
        int(newest.name.split("-")[1])
    ]
    resumed_summary = json.loads((out / "summary.json").read_text())
    assert resumed_summary["steps"] == 48
    # The second node kept its copy of the model: the resumed run streamed none of it.
    assert resumed_summary["model_streamed_bytes"] == 0
