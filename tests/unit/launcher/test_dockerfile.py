"""docker/Dockerfile cannot be built here (no Docker daemon, no GPU base image): hadolint parses
and lints it, and its pins are checked against what the project depends on and tests with."""

from __future__ import annotations

import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

from launcher.render.common import DEFAULT_IMAGE
from launcher.render.kuberay import RAY_VERSION

ROOT = Path(__file__).resolve().parents[3]
DOCKERFILE = ROOT / "docker" / "Dockerfile"
CONSTRAINTS = ROOT / "docker" / "constraints.txt"


def hadolint(path: Path) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("hadolint") or str(Path(__import__("sys").executable).parent / "hadolint")
    return subprocess.run(
        [binary, "--no-color", "--failure-threshold", "warning", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_dockerfile_passes_hadolint() -> None:
    result = hadolint(DOCKERFILE)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    ("text", "code"),
    [
        ("FROM rayproject/ray:2.60.0-py311-gpu\nRUNN pip install x\n", "missing whitespace"),
        ("FROM rayproject/ray\nRUN pip install --no-cache-dir torch==2.13.0\n", "DL3006"),
    ],
)
def test_a_broken_dockerfile_fails_hadolint(tmp_path: Path, text: str, code: str) -> None:
    broken = tmp_path / "Dockerfile"
    broken.write_text(text)
    result = hadolint(broken)
    assert result.returncode != 0 and code in result.stdout, result.stdout + result.stderr


def pins() -> dict[str, str]:
    lines = [ln.split("#")[0].strip() for ln in CONSTRAINTS.read_text().splitlines()]
    return dict(ln.lower().split("==") for ln in lines if ln)


def test_every_dependency_is_pinned_and_ray_matches_the_base_image() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = [re.match(r"[A-Za-z0-9_.\-]+", d)[0].lower() for d in project["dependencies"]]  # type: ignore[index]
    pinned = pins()
    assert [n for n in names if n not in pinned] == []
    base = re.search(
        r"^FROM rayproject/ray:(\d+\.\d+\.\d+)-py(\d)(\d+)-gpu$", DOCKERFILE.read_text(), re.M
    )
    assert base is not None, "FROM must pin a rayproject/ray GPU tag"
    # The image's Ray, not necessarily the one these tests run under (CI also runs them at the
    # pyproject floors).
    assert pinned["ray"] == base[1] == RAY_VERSION
    assert f"ftlaunch:{project['version']}" == DEFAULT_IMAGE
