"""Every example config validates through the schema and starts with the command that runs it."""

from __future__ import annotations

from pathlib import Path

import pytest

from launcher.config_loading import load_job_config

EXAMPLES = sorted((Path(__file__).resolve().parents[2] / "configs" / "examples").glob("*.yaml"))


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_config_validates_and_says_how_to_run_it(path: Path) -> None:
    first = path.read_text().splitlines()[0]
    assert first.startswith("# Run: ") and ("ftlaunch run" in first or "make " in first)
    load_job_config(path)
