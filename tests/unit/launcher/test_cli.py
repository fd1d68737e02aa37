"""The real `ftlaunch` command in a fresh interpreter: no torch for --help, exit code 2 and one
line (no traceback) for each kind of bad input that is caught before any cluster starts."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT
from tests.fixtures import (
    assert_user_error,
    ftlaunch,
    ftlaunch_loading,
    keyword_rows,
    write_jsonl,
)
from tests.integration.conftest import free_port


def test_help_does_not_import_torch_or_ray() -> None:
    result, loaded = ftlaunch_loading("--help")
    assert result.returncode == 0 and "run" in result.stdout, result.stderr
    assert loaded == set(), loaded


@pytest.mark.parametrize(
    "args",
    [
        ["status", "ftlaunch-x-1"],
        ["logs", "ftlaunch-x-1"],
        ["stop", "ftlaunch-x-1"],
        ["list"],
    ],
)
def test_job_commands_import_neither_ray_nor_torch(args: list[str]) -> None:
    """Nothing answers at the address: each command fails with one line, having loaded neither
    (tests/integration/test_jobs_api.py checks the same against a real Jobs API)."""
    port = free_port()
    result, loaded = ftlaunch_loading(*args, "--address", f"http://127.0.0.1:{port}")
    assert result.returncode == 2 and "cannot reach the Ray Jobs API" in result.stderr
    assert loaded == set(), loaded


def test_shell_completion_answers_without_torch_or_ray() -> None:
    """Completion runs the CLI on every <TAB>: it must be as light as --help."""
    env = {"_FTLAUNCH_COMPLETE": "complete_bash", "COMP_WORDS": "ftlaunch sta", "COMP_CWORD": "1"}
    result, loaded = ftlaunch_loading(env=env)
    assert result.returncode == 0 and result.stdout.split() == ["status"], result.stderr
    assert loaded == set(), loaded
    # The script --show-completion prints for the detected shell (which is `sh` under make, so
    # the shell is named here the way typer's completion variable takes it).
    script, loaded = ftlaunch_loading(env={"_FTLAUNCH_COMPLETE": "source_bash"})
    assert "_ftlaunch_completion" in script.stdout and loaded == set()


def test_launcher_and_cluster_import_without_torch() -> None:
    code = (
        "import sys, launcher.commands.run, launcher.cli, cluster.registry, cluster.worker.entry;"
        " print('torch' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=REPO_ROOT
    )
    assert out.stdout.strip() == "False", out.stderr


@pytest.fixture()
def job_dir(tmp_path: Path, tiny_bert: Path) -> Path:
    write_jsonl(tmp_path / "train.jsonl", keyword_rows(64, 0))
    write_jsonl(tmp_path / "validation.jsonl", keyword_rows(16, 1))
    write_jsonl(tmp_path / "test.jsonl", keyword_rows(16, 2))
    (tmp_path / "job.yaml").write_text(
        f"model: {{path: {tiny_bert}}}\n"
        "data: {train: train.jsonl, validation: validation.jsonl, test: test.jsonl, max_length: 32, cache_dir: cache}\n"
        "training: {micro_batch_size: 4}\n"
        "output: {dir: out}\n"
    )
    return tmp_path


@pytest.mark.parametrize(
    ("overrides", "fragments"),
    [
        (["optim.lr=-1"], ["optim.lr: must be > 0"]),
        (["engine.zero_stage=5"], ["engine.zero_stage: must be <= 3 (got 5)"]),
        (["cluster.num_workers=0"], ["cluster.num_workers: must be > 0"]),
        (["training.epoch=3"], ["training.epoch: unknown key; did you mean 'training.epochs'?"]),
        (["data.train=missing.jsonl"], ["data.train: file not found", "missing.jsonl"]),
        (["data.text_column=body"], ["data.train:", "no column 'body' (data.text_column)"]),
        (["data.label_column=y"], ["data.train:", "no column 'y' (data.label_column)"]),
        (
            ["model.path=/nonexistent/model"],
            ["model.path: '/nonexistent/model' is not a directory"],
        ),
        (["model.path=."], ["model.path:", "not a Hugging Face model directory (no config.json)"]),
        (
            ["data.max_length=4096"],
            ["data.max_length: 4096 exceeds the model's position limit 128"],
        ),
        (
            ["training.micro_batch_size=64"],
            ["data.train: 64 rows cannot fill one optimizer step of 128"],
        ),
    ],
)
def test_bad_inputs_exit_2_with_one_line(
    job_dir: Path, overrides: list[str], fragments: list[str]
) -> None:
    args = [arg for o in overrides for arg in ("--set", o)]
    assert_user_error(ftlaunch("run", "job.yaml", *args, cwd=job_dir), *fragments)
    assert not (job_dir / "out").exists()  # nothing was started or written


def test_an_output_dir_over_the_inputs_or_a_users_folder_is_refused_and_nothing_changes(
    job_dir: Path, tiny_bert: Path
) -> None:
    (job_dir / "mine").mkdir()
    (job_dir / "mine" / "thesis.tex").write_text("years of work")
    watched = [*tiny_bert.rglob("*"), *job_dir.rglob("*")]
    before = {p: p.read_bytes() for p in watched if p.is_file()}
    for output, fragment in [
        (tiny_bert.parent, f"output.dir: {tiny_bert.parent} contains model.path"),
        (tiny_bert / "runs", f"output.dir: {tiny_bert / 'runs'} lies inside model.path"),
        (job_dir / "train.jsonl", "contains data.train"),
        (job_dir / "mine", "is not empty and was not created by ftlaunch"),
    ]:
        result = ftlaunch("run", "job.yaml", "--set", f"output.dir={output}", cwd=job_dir)
        assert_user_error(result, fragment)
    after = {p: p.read_bytes() for p in [*tiny_bert.rglob("*"), *job_dir.rglob("*")] if p.is_file()}
    assert after == before  # the model, the data and the user's folder are byte-identical


def test_auth_mode_disabled_is_refused_before_anything_is_written(job_dir: Path) -> None:
    result = ftlaunch("run", "job.yaml", cwd=job_dir, env={"RAY_AUTH_MODE": "disabled"})
    assert_user_error(result, "RAY_AUTH_MODE: is 'disabled'", "--insecure")
    assert not (job_dir / "out").exists() and not (job_dir / "cache").exists()


def test_empty_data_file(job_dir: Path) -> None:
    (job_dir / "validation.jsonl").write_text("")
    assert_user_error(ftlaunch("run", "job.yaml", cwd=job_dir), "data.validation: file is empty")


def test_label_never_seen_in_train(job_dir: Path) -> None:
    write_jsonl(job_dir / "test.jsonl", [*keyword_rows(4, 5), {"text": "hmm", "label": "unsure"}])
    assert_user_error(
        ftlaunch("run", "job.yaml", cwd=job_dir),
        "data.test: label(s) 'unsure'",
        "never appear in data.train",
    )


def test_malformed_yaml_gives_the_line(job_dir: Path) -> None:
    (job_dir / "bad.yaml").write_text("model:\n  path: x\n  task: [oops\n")
    assert_user_error(ftlaunch("run", "bad.yaml", cwd=job_dir), "bad.yaml: line", "malformed YAML")


def test_missing_config(job_dir: Path) -> None:
    assert_user_error(ftlaunch("run", "nope.yaml", cwd=job_dir), "nope.yaml: config file not found")


def test_validate_prints_the_resolved_config(job_dir: Path) -> None:
    result = ftlaunch("validate", "job.yaml", "--set", "optim.lr=1e-3", cwd=job_dir)
    assert result.returncode == 0, result.stderr
    assert "lr: 0.001" in result.stdout and "zero_stage: 2" in result.stdout
