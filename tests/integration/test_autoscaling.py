"""Placement on an autoscaling cluster that starts with no node of the type the job needs, using
Ray's own fake multi-node provider (`RAY_FAKE_CLUSTER=1`, the provider behind
`ray.cluster_utils.AutoscalingCluster`): its autoscaler launches real raylets on this machine.

`AutoscalingCluster` itself is not used: its start() and shutdown() run `ray stop --force`, which
would kill every other Ray cluster on the machine, and the example config it loads is not shipped
in the wheel. The head is started the same way it does, with token auth, a free port and a
private temp dir, and stopped by process group and session (never `ray stop`).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fixtures import assert_user_error, ftlaunch
from tests.integration.conftest import (
    free_port,
    head_args,
    private_temp_dir,
    ray_start,
    stop_group,
    wait_for_nodes,
    wait_for_port,
    write_job,
)

pytestmark = [pytest.mark.ray, pytest.mark.dist]

SLOT_TYPE = "ray.worker.slot"

LIST_NODES = """
import json, ray
ray.init(address={address!r}, logging_level="ERROR", log_to_driver=False)
print("NODES", json.dumps(sorted(n["NodeID"] for n in ray.nodes() if n["Alive"])))
"""


def fake_cluster_config(port: int) -> dict:
    """A cluster-launcher config for the fake provider: a head with 1 CPU and no `slot`, and a
    worker type with 1 CPU + 1 slot that the autoscaler may launch twice (none at start)."""
    return {
        "cluster_name": f"ftl-fake-{port}",
        "max_workers": 2,
        "provider": {
            "type": "fake_multinode",
            "use_node_id_as_ip": True,
            "disable_node_updaters": True,
            "disable_launch_config_check": True,
            "gcs_address": f"127.0.0.1:{port}",
        },
        "available_node_types": {
            "ray.head.default": {"resources": {"CPU": 1}, "node_config": {}, "max_workers": 0},
            SLOT_TYPE: {
                "resources": {"CPU": 1, "slot": 1, "object_store_memory": 200_000_000},
                "node_config": {},
                "min_workers": 0,
                "max_workers": 2,
            },
        },
        "head_node_type": "ray.head.default",
        "upscaling_speed": 1.0,
        "idle_timeout_minutes": 5,
        "auth": {},
        "docker": {},
        **{key: [] for key in ("initialization_commands", "setup_commands", "rsync_exclude")},
        **{key: [] for key in ("head_setup_commands", "worker_setup_commands", "rsync_filter")},
        **{key: [] for key in ("head_start_ray_commands", "worker_start_ray_commands")},
        "file_mounts": {},
        "cluster_synced_files": [],
        "file_mounts_sync_continuously": False,
    }


def alive_nodes(address: str, env: dict[str, str]) -> list[str]:
    out = subprocess.run(
        [sys.executable, "-c", LIST_NODES.format(address=address)],
        env=dict(os.environ, **env),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    # The driver may also print the autoscaler's events ("(autoscaler +5s) Resized to ...").
    (line,) = [x for x in out.stdout.splitlines() if x.startswith("NODES ")]
    return json.loads(line.removeprefix("NODES "))


def kill_session(session: int) -> None:
    """SIGKILL what is left of the head's session: Ray workers move to process groups of their
    own, and the fake nodes are children of the head's autoscaler."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
            if int(fields[3]) == session:  # stat: state ppid pgrp session ...
                os.kill(int(proc.name), signal.SIGKILL)


@pytest.fixture(scope="module")
def autoscaling_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """The fake autoscaling head; yields its address, the token env and the nodes alive at start."""
    port = free_port()
    root = tmp_path_factory.mktemp("autoscaling")
    config = root / "autoscaler.json"
    config.write_text(json.dumps(fake_cluster_config(port)))
    token = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    env = dict(os.environ, **token, RAY_FAKE_CLUSTER="1", AUTOSCALER_UPDATE_INTERVAL_S="1")
    more = ("--num-cpus=1", f"--autoscaling-config={config}")
    head = ray_start(head_args(port, private_temp_dir("ftl-as"), *more), env, root / "head.log")
    address = f"127.0.0.1:{port}"
    try:
        wait_for_port(port, timeout_s=60)
        wait_for_nodes(address, env, 1, head, root / "head.log")
        yield {"address": address, "env": token, "before": alive_nodes(address, token)}
    finally:
        stop_group(head)
        kill_session(head.pid)


@pytest.mark.timeout(240)  # includes the fake cluster's start if this runs first
def test_a_worker_no_node_type_can_hold_fails_at_once_naming_the_biggest_type(
    tmp_path: Path, tiny_bert: Path, keyword_data: dict[str, Path], autoscaling_cluster: dict
) -> None:
    job = write_job(
        tmp_path, tiny_bert, keyword_data, "{num_workers: 2, custom_resources: {slot: 2}}"
    )
    started = time.monotonic()
    result = ftlaunch(
        "run", str(job), "--address", autoscaling_cluster["address"], env=autoscaling_cluster["env"]
    )
    elapsed = time.monotonic() - started
    assert_user_error(
        result,
        "cluster.custom_resources.slot: one worker x {CPU: 1, slot: 2} fits no node the "
        f"autoscaler may launch; the biggest node type is {SLOT_TYPE} with {{CPU: 1, slot: 1}}",
    )
    assert elapsed < 60, elapsed  # not cluster.placement_timeout_s (600 s)
    assert not (tmp_path / "out" / "summary.json").exists()


@pytest.mark.timeout(420)
def test_job_runs_to_the_end_on_nodes_the_autoscaler_launched(
    tmp_path: Path, tiny_bert: Path, keyword_data: dict[str, Path], autoscaling_cluster: dict
) -> None:
    address, env, before = (autoscaling_cluster[k] for k in ("address", "env", "before"))
    assert len(before) == 1  # the head only: no node with a `slot` exists yet
    job = write_job(
        tmp_path,
        tiny_bert,
        keyword_data,
        "{num_workers: 2, placement: spread, num_nodes: 2, custom_resources: {slot: 1},"
        " placement_timeout_s: 240}",
    )
    result = ftlaunch("run", str(job), "--address", address, env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    waiting = "waiting for 2 x {CPU: 1, slot: 1} nodes from the autoscaler"
    assert f"{waiting}: 0 of 2 up" in result.stdout, result.stdout[-3000:]
    assert f"{waiting}: 2 of 2 up" in result.stdout, result.stdout[-3000:]
    out = tmp_path / "out"  # on the head: this machine, where ftlaunch ran
    summary = json.loads((out / "summary.json").read_text())
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert max(r["step"] for r in records if r["event"] == "train") == 2  # ran to the end
    placed = {p["rank"]: p["node_id"] for p in summary["placement"]}
    assert sorted(placed) == [0, 1]
    assert len(set(placed.values())) == 2  # num_nodes: 2 over nodes that were not up before
    assert not set(placed.values()) & set(before)
    assert set(placed.values()) <= set(alive_nodes(address, env))  # launched and still up
    assert (out / "model").is_dir()
