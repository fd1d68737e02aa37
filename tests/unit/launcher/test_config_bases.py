"""Base configs: deep merge with the file's own keys winning, lists of bases in order, paths
relative to the naming file, --set last, provenance for `validate --explain`, and one-line errors
for cycles, missing bases and malformed `base:` entries. Also `cluster.env` refusing secrets."""

from __future__ import annotations

from pathlib import Path

import pytest

from launcher.config_bases import explain
from launcher.config_loading import load_job_config, load_job_config_explained
from launcher.errors import UserError
from tests.fixtures import assert_user_error, ftlaunch


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    write(
        tmp_path / "configs/common/model.yaml",
        "model: {path: minilm-l6}\noptim: {lr: 1.0e-4, schedule: cosine}\n"
        "cluster: {num_workers: 4, env: {HF_HOME: /scratch/hf}}\n",
    )
    write(
        tmp_path / "configs/common/data.yaml",
        "data: {train: a.jsonl, validation: b.jsonl, test: c.jsonl}\noptim: {lr: 3.0e-4}\n",
    )
    return write(
        tmp_path / "configs/jobs/small.yaml",
        "base: [../common/model.yaml, ../common/data.yaml]\n"
        "name: small\ncluster: {num_workers: 2}\n",
    )


def test_bases_merge_in_order_and_the_file_wins(
    tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path / "configs")  # base paths are relative to the naming file
    job, origins = load_job_config_explained(Path("jobs/small.yaml"), ["training.epochs=5"])
    assert job.name == "small"
    assert job.optim.lr == 3.0e-4  # the later base wins over the earlier one
    assert job.optim.schedule == "cosine"  # kept from the first base (deep merge)
    assert job.cluster.num_workers == 2  # the file's own key wins
    assert job.cluster.env == {"HF_HOME": "/scratch/hf"}  # sibling key of a merged section
    assert job.training.epochs == 5
    assert origins["optim.lr"].endswith("common/data.yaml")
    assert origins["optim.schedule"].endswith("common/model.yaml")
    assert origins["cluster.num_workers"] == "jobs/small.yaml"
    assert origins["training.epochs"] == "--set"
    lines = explain(job.model_dump(mode="json"), origins)
    assert "optim.lr: 0.0003  # " + origins["optim.lr"] in lines
    assert "training.micro_batch_size: 16  # default" in lines
    assert "training.epochs: 5  # --set" in lines


def test_base_cycles_and_missing_bases_are_one_line(tmp_path: Path) -> None:
    a = write(tmp_path / "a.yaml", "base: b.yaml\nname: a\n")
    write(tmp_path / "b.yaml", "base: a.yaml\n")
    with pytest.raises(UserError) as cycle:
        load_job_config(a)
    (line,) = cycle.value.messages
    assert "base configs form a cycle" in line and line.endswith(
        f"{a} -> {tmp_path / 'b.yaml'} -> {a}"
    )
    missing = write(tmp_path / "m.yaml", "base: [nope.yaml]\n")
    with pytest.raises(UserError, match=rf"{missing}: base 'nope.yaml' not found"):
        load_job_config(missing)
    bad = write(tmp_path / "bad.yaml", "base: {x: 1}\n")
    with pytest.raises(UserError, match="base must be a file path or a list of file paths"):
        load_job_config(bad)


def test_validate_explain_on_the_cli(tree: Path) -> None:
    result = ftlaunch("validate", str(tree), "--explain", timeout=60)
    assert result.returncode == 0, result.stderr
    assert f"cluster.num_workers: 2  # {tree}" in result.stdout
    assert 'optim.schedule: "cosine"  # ' in result.stdout
    cycle = write(tree.parent / "loop.yaml", "base: loop.yaml\n")
    assert_user_error(ftlaunch("validate", str(cycle), timeout=60), "base configs form a cycle")


def test_cluster_env_refuses_secrets_and_reserved_names(tmp_path: Path) -> None:
    job = write(
        tmp_path / "job.yaml",
        "model: {path: m}\ndata: {train: a, validation: b, test: c}\n"
        "cluster: {env: {NCCL_SOCKET_IFNAME: eth0, TOKENIZERS_PARALLELISM: 'false'}}\n",
    )
    assert load_job_config(job).cluster.env["NCCL_SOCKET_IFNAME"] == "eth0"
    assert (
        load_job_config(job, ["cluster.env.NCCL_IB_DISABLE=1"]).cluster.env["NCCL_IB_DISABLE"]
        == "1"
    )
    with pytest.raises(UserError) as caught:
        load_job_config(job, ["cluster.env.HF_TOKEN=hf_x", "cluster.env.RANK=3"])
    text = " | ".join(caught.value.messages)
    assert "cluster.env.HF_TOKEN: looks like a secret" in text and "cluster.secret_env" in text
    assert "cluster.env.RANK: is set by Ray/ftlaunch" in text
