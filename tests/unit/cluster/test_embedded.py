"""The embedded cluster's `ray start`: lean unless the dashboard is asked for, with flags the
installed Ray accepts, and a user's own RAY_* settings kept."""

from __future__ import annotations

from pathlib import Path

from ray.scripts.scripts import start

from cluster.ray.embedded import LEAN_ENV, LEAN_FLAGS, EmbeddedCluster


def _cluster(dashboard: bool, environ: dict[str, str] | None = None) -> EmbeddedCluster:
    return EmbeddedCluster(2, "t0ken", (dashboard, "127.0.0.1"), environ or {"PATH": "/bin"})


def test_without_the_dashboard_the_optional_processes_are_off() -> None:
    cluster = _cluster(dashboard=False)
    command = cluster.command(Path("/tmp/x/ray"), [1, 2, 3])
    assert "--include-dashboard=false" in command
    assert set(LEAN_FLAGS) <= set(command)
    env = cluster.environment()
    assert env["RAY_enable_metrics_collection"] == "0"
    assert env["RAY_task_events_report_interval_ms"] == "0"
    assert env["RAY_AUTH_TOKEN"] == "t0ken" and env["PATH"] == "/bin"


def test_the_dashboard_gets_everything_it_shows() -> None:
    cluster = _cluster(dashboard=True)
    command = cluster.command(Path("/tmp/x/ray"), [1, 2, 3])
    assert "--include-dashboard=true" in command and "--dashboard-host=127.0.0.1" in command
    assert not set(LEAN_FLAGS) & set(command)
    assert not set(LEAN_ENV) & set(cluster.environment())


def test_a_users_ray_setting_wins() -> None:
    env = _cluster(False, {"RAY_enable_metrics_collection": "1"}).environment()
    assert env["RAY_enable_metrics_collection"] == "1"
    assert env["RAY_task_events_report_interval_ms"] == "0"


def test_the_installed_ray_start_knows_the_lean_flags() -> None:
    # --no-monitor is hidden in `ray start --help`: a Ray upgrade that drops it must fail here.
    options = {opt for param in start.params for opt in param.opts}
    assert {flag.split("=")[0] for flag in LEAN_FLAGS} <= options
