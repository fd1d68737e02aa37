"""An MLflow tracking server that stops answering mid-run costs a warning, never a record, a
wait in the collector or the run: a real `mlflow server`, SIGSTOPped, then continued."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.integration.conftest import free_port, wait_for_port
from tests.unit.trainer.test_metrics import window

MLFLOW = Path(sys.executable).with_name("mlflow")


@pytest.mark.timeout(180)
def test_an_mlflow_server_that_stops_answering_costs_a_warning_and_no_record(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    from cluster.head.collector import RunCollector
    from cluster.head.metrics_log import Trackers
    from cluster.head.mlflow import start_mlflow_run

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")  # the collector's fail-fast, shortened
    port = free_port()
    server = subprocess.Popen(
        [str(MLFLOW), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"],
        stdout=(tmp_path / "server.log").open("w"), stderr=subprocess.STDOUT,
        start_new_session=True,
    )  # fmt: skip
    try:
        wait_for_port(port, timeout_s=90)
        uri = f"http://127.0.0.1:{port}"
        run_id = deadline_call(lambda: start_mlflow_run(uri, "exp", "run", {"optim": {"lr": 1}}))
        collector = RunCollector(str(tmp_path / "run"), trackers=Trackers(mlflow_run=(uri, run_id)))
        times = [[1.0, 1.0], [1.0, 1.0]]
        collector.report(window(2, [0.1, 0.1], times) | {"loss": 0.9})

        os.killpg(server.pid, signal.SIGSTOP)  # accepts connections, never answers
        started = time.monotonic()
        for step in (4, 6, 8):
            collector.report(window(step, [0.1, 0.1], times) | {"loss": 1 / step})
        collector.report({"event": "summary", "steps": 8, "test": {"accuracy": 0.8}})
        assert time.monotonic() - started < 1.0  # nothing waited for MLflow
        warning = wait_until(lambda: [r for r in collector.drain() if r["event"] == "warning"])
        assert warning[0]["message"].startswith("MLflow unreachable")

        os.killpg(server.pid, signal.SIGCONT)  # back: the queued records go, none lost
        collector.close()
        client = MlflowClient(uri)
        losses = client.get_metric_history(run_id, "train/loss")
        assert sorted(m.step for m in losses) == [2, 4, 6, 8]
        assert client.get_metric_history(run_id, "summary/test_accuracy")[0].value == 0.8
        assert client.get_run(run_id).info.status == "FINISHED"
        lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
        assert sum('"event": "train"' in line for line in lines) == 4
        assert any('"event": "summary"' in line for line in lines)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, signal.SIGCONT)
            os.killpg(server.pid, signal.SIGKILL)
        server.wait(timeout=30)


def deadline_call(call, timeout_s: float = 60):  # the server answers a little after its port opens
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return call()
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def wait_until(condition, timeout_s: float = 30):
    deadline = time.monotonic() + timeout_s
    while not (value := condition()):
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.1)
    return value
