"""Mirror the run's metrics stream into MLflow (when `output.mlflow_uri` is set), from the head.

Only the collector on the head talks to MLflow: workers never need its credentials or network
access. The client is explicit (MlflowClient with a run id), not mlflow's global "active run",
so nothing leaks between runs started in one process.

MLflow is never in the collector's critical path: MetricsLog puts the logger behind a
`QueuedMirror` (mirror.py), which sends from a queue on a thread of its own.
"""

from __future__ import annotations

import os
import time
from typing import Any

# Fail within seconds when the tracking server is unreachable, instead of mlflow's default
# minutes of retries (we check reachability before any worker starts).
CHECK_ENV = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}
SKIPPED_FIELDS = ("step", "event", "epoch", "attempt")


class MlflowUnavailable(Exception):
    """The tracking URI cannot be used; the message names it and says why."""


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested config -> MLflow params `section.key: value` (values as strings, as MLflow keeps them)."""
    flat: dict[str, str] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat |= flatten(value, f"{name}.")
        else:
            flat[name] = str(value)[:500]  # MLflow's param value limit is generous but finite
    return flat


def numeric_fields(record: dict[str, Any], prefix: str) -> dict[str, float]:
    return {
        f"{prefix}/{key}": float(value)
        for key, value in record.items()
        if key not in SKIPPED_FIELDS
        and isinstance(value, int | float)
        and not isinstance(value, bool)
    }


class MlflowLogger:
    """Logs to a run made by `start_mlflow_run`: train/eval metrics by step, the summary's test
    metrics at the end, and the final status."""

    def __init__(self, uri: str, run_id: str) -> None:
        # The collector runs in a Ray actor, not in the launcher that checked the URI: fail fast
        # here too, so one attempt costs seconds and the mirror's queue, not the run, waits.
        os.environ.update({k: v for k, v in CHECK_ENV.items() if k not in os.environ})
        from mlflow.tracking import MlflowClient

        self.client, self.run_id = MlflowClient(tracking_uri=uri), run_id

    def log(self, record: dict[str, Any]) -> None:
        event = record.get("event")
        if event in ("train", "eval") and "step" in record:
            self._log_metrics(numeric_fields(record, event), int(record["step"]))
        elif event == "summary":
            test = {f"test_{k}": v for k, v in record.get("test", {}).items()}
            self._log_metrics(numeric_fields(test, "summary"), int(record.get("steps", 0)))

    def finish(self, status: str) -> None:
        self.client.set_terminated(self.run_id, status=status)

    def _log_metrics(self, values: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(key, value, now, step) for key, value in values.items()]
        if metrics:
            self.client.log_batch(self.run_id, metrics=metrics)


def start_mlflow_run(uri: str, experiment: str, run_name: str, config: dict[str, Any]) -> str:
    """Create (or reuse) the experiment, start a run with the config as params, return its id.

    Called by the launcher before any worker starts, so a bad URI fails fast.

    Raises:
        MlflowUnavailable: MLflow is missing or the URI cannot be used (one clear line).
    """
    os.environ.update({k: v for k, v in CHECK_ENV.items() if k not in os.environ})
    try:
        from mlflow.tracking import MlflowClient
    except ImportError as exc:
        raise MlflowUnavailable(
            "output.mlflow_uri: MLflow is not installed (pip install 'ftlaunch[mlflow]')"
        ) from exc
    try:
        client = MlflowClient(tracking_uri=uri)
        found = client.get_experiment_by_name(experiment)
        experiment_id = found.experiment_id if found else client.create_experiment(experiment)
        run = client.create_run(experiment_id, run_name=run_name)
        from mlflow.entities import Param

        items = [Param(k, v) for k, v in flatten(config).items()]
        for start in range(0, len(items), 100):  # MLflow accepts at most 100 params per batch
            client.log_batch(run.info.run_id, params=items[start : start + 100])
    except Exception as exc:  # mlflow raises many types (HTTP, SQL, permissions)
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise MlflowUnavailable(f"output.mlflow_uri: cannot use {uri!r}: {first_line}") from exc
    return run.info.run_id
