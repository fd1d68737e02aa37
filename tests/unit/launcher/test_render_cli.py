"""`ftlaunch render` as a user runs it, in a fresh interpreter: the manifest on stdout or in a
new file, no torch or Ray imported, and bad input as one `error:` line with exit code 2."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.fixtures import assert_user_error, ftlaunch, ftlaunch_loading

JOB = """\
name: llama-8b
model: {path: meta-llama/Llama-3.1-8B}
data: {train: hf://org/d, validation: hf://org/d:validation, test: hf://org/d:test}
output: {dir: runs/llama}
cluster: {num_workers: 16, gpus_per_worker: 1, cpus_per_worker: 8}
"""


@pytest.fixture()
def job(tmp_path: Path) -> Path:
    path = tmp_path / "job.yaml"
    path.write_text(JOB)
    return path


def test_render_writes_the_manifest_without_torch_or_ray(job: Path) -> None:
    # Refusing to replace --out is test_render.py::test_out_never_replaces_a_file_without_force.
    out = job.parent / "cluster.yaml"
    args = ("render", "ray-aws", str(job), "--gpu-type", "H100", "--out", str(out))
    result, heavy = ftlaunch_loading(*args, cwd=job.parent)
    assert result.returncode == 0, result.stderr
    assert heavy == set(), f"render imported {heavy}"
    config = yaml.safe_load(out.read_text())
    assert config["available_node_types"]["ray.worker.gpu"]["max_workers"] == 2
    assert "wrote" in result.stderr and result.stdout == ""


def test_unknown_target_is_one_line_listing_the_known_ones(job: Path) -> None:
    result = ftlaunch("render", "helm-chart", str(job), cwd=job.parent)
    assert_user_error(
        result,
        "TARGET: unknown target 'helm-chart'",
        "kuberay-rayjob, kuberay-raycluster, ray-aws, ray-gcp, skypilot",
    )
    assert result.stdout == ""
