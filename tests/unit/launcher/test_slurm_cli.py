"""`ftlaunch slurm` bad input, through the real CLI in a fresh interpreter: one `error:` line per
problem, exit code 2, nothing submitted or written. Needs no SLURM: these fail before sbatch."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.fixtures import ftlaunch


@pytest.fixture()
def job(tmp_path: Path) -> Path:
    path = tmp_path / "job.yaml"
    path.write_text(
        "model: {path: m}\ndata: {train: a, validation: b, test: c}\noutput: {dir: out}\n"
    )
    return path


def errors(result: subprocess.CompletedProcess[str]) -> list[str]:
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    lines = result.stderr.strip().splitlines()
    assert all(line.startswith("error: ") for line in lines), result.stderr
    return lines


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--nodes", "0"], "error: --nodes: must be >= 1 (got 0)"),
        (["--nodes", "2", "--time", "1h"], "error: --time: '1h': expected MINUTES"),
        (["--nodes", "2", "--time", "0:30"], "error: --time: 0:30 leaves no time to train"),
        (
            ["--nodes", "2", "--partition", "gpu;rm"],
            "error: --partition: 'gpu;rm' is not a SLURM name",
        ),
        (["--nodes", "2", "--account", "a b"], "error: --account: 'a b' is not a SLURM name"),
        (["--nodes", "2", "--cpus-per-node", "0"], "error: --cpus-per-node: must be >= 1 (got 0)"),
        (
            ["--nodes", "1", "--cpus-per-node", "1"],
            "error: cluster.num_workers: needs 2 workers x 1 CPU",
        ),
        (["--nodes", "2", "--set", "optim.lr=-1"], "error: optim.lr: must be > 0"),
    ],
)
def test_invalid_slurm_options_exit_2_with_one_line(
    job: Path, args: list[str], expected: str
) -> None:
    lines = errors(ftlaunch("slurm", str(job), *args, cwd=job.parent))
    assert len(lines) == 1 and lines[0].startswith(expected), lines
    assert not (job.parent / "out").exists()


def test_sbatch_not_found_exits_2_and_writes_nothing(job: Path) -> None:
    env = {"PATH": "/nonexistent"}  # no SLURM client tools at all
    lines = errors(ftlaunch("slurm", str(job), "--nodes", "2", cwd=job.parent, env=env))
    assert lines == ["error: sbatch: not found on PATH; run this on a SLURM login node"]
    assert not (job.parent / "out").exists()


def test_dry_run_prints_the_script_and_writes_nothing(job: Path) -> None:
    result = ftlaunch(
        "slurm",
        str(job),
        "--nodes",
        "2",
        "--time",
        "30",
        "--dry-run",
        cwd=job.parent,
        env={"PATH": "/nonexistent"},  # a dry run needs no sbatch
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("#!/bin/bash\n") and "#SBATCH --nodes=2" in result.stdout
    assert "#SBATCH --time=30" in result.stdout and 'launcher.cli "${ARGS[@]}"' in result.stdout
    assert not (job.parent / "out").exists()
