"""Closed by default, seen from outside a real embedded run (the shared uninterrupted reference
run of tests/integration/runs.py, watched while it trained): every socket its processes listen
on is loopback, its Ray lived in a private temp dir that is gone afterwards, and of the two
secrets planted in its environment only the one listed in cluster.secret_env reached the workers;
the other is named in a warning, and neither value shows in any output or file of the run."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.integration.runs import LISTED_SECRET, PLANTED_SECRET, is_loopback, records

pytestmark = [pytest.mark.ray, pytest.mark.dist]


@pytest.mark.timeout(600)
def test_an_embedded_run_listens_on_loopback_only_in_a_private_temp_dir(uninterrupted) -> None:
    reference = uninterrupted(2)
    ports = {port for _, port, _ in reference.listening}
    assert len(ports) >= 3, reference.listening  # GCS, raylet, workers...: the watch saw them
    beyond = sorted(a for a in reference.listening if not is_loopback(a[0]))
    assert beyond == [], f"listening beyond loopback: {beyond}"
    assert len(reference.ray_dirs) == 1, reference.ray_dirs
    ((temp_dir, mode),) = reference.ray_dirs.items()
    assert mode == 0o700 and temp_dir.startswith("/tmp/ftl-ray-")
    assert not Path(temp_dir).exists()  # removed when the run ended
    assert not Path("/tmp/ray/session_latest").resolve().is_relative_to(temp_dir)


@pytest.mark.timeout(600)
def test_only_listed_secrets_reach_the_workers_and_no_value_shows(uninterrupted) -> None:
    reference = uninterrupted(2)
    received = {r["rank"]: r["names"] for r in records(reference.out) if r["event"] == "secret_env"}
    assert received == {0: [LISTED_SECRET[0]], 1: [LISTED_SECRET[0]]}
    stderr = reference.run.stderr()
    assert (
        f"warning: {PLANTED_SECRET[0]} looks like a secret but is not in cluster.secret_env"
        in stderr
    )
    shown = (reference.run.stdout() + stderr).encode() + b"".join(
        p.read_bytes() for p in sorted(reference.out.rglob("*")) if p.is_file()
    )
    for _, value in (LISTED_SECRET, PLANTED_SECRET):
        assert value.encode() not in shown
