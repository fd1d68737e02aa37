"""Placement on a real 3-node Ray cluster on loopback: `ray start --head` plus two `ray start
--address` nodes, each with 2 CPUs, 1 logical GPU and 2 units of a custom `slot` resource.

The training runs ask for `slot`, not GPUs: with gpus_per_worker > 0 the workers would set up
NCCL and CUDA, which this CPU-only machine does not have. GPUs are still on the nodes, so the
fail-fast check is tested on the resource the issue names. Every rank reports its node id to the
head (`rank_start` records in metrics.jsonl, `placement` in summary.json); the tests compare them
with the cluster's node ids.
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
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fixtures import ftlaunch
from tests.integration.conftest import RAY_BIN, free_port, stop_group, wait_for_port, write_job

pytestmark = [pytest.mark.ray, pytest.mark.dist]

NODE_RESOURCES = ["--num-cpus=2", "--num-gpus=1", '--resources={"slot": 2}']

LIST_NODES = """
import json, ray
ray.init(address={address!r}, logging_level="ERROR")
head = ray.get_runtime_context().get_node_id()
print(json.dumps({{"head": head, "nodes": [n["NodeID"] for n in ray.nodes() if n["Alive"]]}}))
"""

# Holds one `slot` on one node until killed, so a request that fits the cluster cannot be placed.
HOLD_ONE_SLOT = """
import time, ray
from ray.util.placement_group import placement_group
ray.init(address={address!r}, logging_level="ERROR")
group = placement_group([{{"slot": 1}}], strategy="STRICT_PACK", name="test-holder")
assert group.wait(60)
print("held", flush=True)
time.sleep(600)
"""

# Alive actors and unremoved placement groups (the holder's aside), and every probe ftlaunch made.
CLUSTER_STATE = """
import json, ray
ray.init(address={address!r}, logging_level="ERROR")
groups = ray.util.placement_group_table().values()
actors = ray._private.state.state.actor_table(None)
print(json.dumps({{
    "actors": sorted(f"{{a['ActorClassName']}}:{{i}}" for i, a in actors.items() if a["State"] == "ALIVE"),
    "groups": sorted(g["name"] for g in groups if g["state"] != "REMOVED" and g["name"] != "test-holder"),
    "probes": sorted(g["state"] for g in groups if g["name"].startswith("ftlaunch-probe-")),
}}))
"""


def run_python(code: str, env: dict[str, str]) -> str:
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def three_nodes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """Head + 2 nodes, token auth, private temp dir, stopped by process group (never `ray stop`)."""
    port = free_port()
    temp_dir = Path("/tmp") / f"ftl-ray-{secrets.token_hex(4)}"
    env = dict(os.environ, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32))
    address = f"127.0.0.1:{port}"
    logs = tmp_path_factory.mktemp("ray-3-nodes")
    common = [*NODE_RESOURCES, "--node-ip-address=127.0.0.1", "--disable-usage-stats", "--block"]
    processes = []

    def start(name: str, *args: str) -> None:
        processes.append(
            subprocess.Popen(
                [str(RAY_BIN), "start", *args, *common],
                env=env,
                stdout=(logs / f"{name}.log").open("w"),
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        )

    try:
        start(
            "head",
            "--head",
            f"--port={port}",
            "--include-dashboard=false",
            f"--temp-dir={temp_dir}",
        )
        wait_for_port(port, timeout_s=60)
        for name in ("node1", "node2"):
            # One at a time: nodes starting together on one IP can pick the same free port.
            start(name, f"--address={address}")
            wait_for_log(logs / f"{name}.log", "Ray runtime started", processes[-1])
        ids = json.loads(run_python(LIST_NODES.format(address=address), env))
        assert len(ids["nodes"]) == 3, ids
        token_env = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": env["RAY_AUTH_TOKEN"]}
        yield {"address": address, "env": token_env, **ids}
    finally:
        for process in processes:  # TERM all nodes at once, then wait: each takes seconds
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
        for process in reversed(processes):
            stop_group(process)


def wait_for_log(log: Path, line: str, process: subprocess.Popen, timeout_s: float = 120) -> None:
    """`ray start --block` logs `line` once the node has registered with the head."""
    deadline = time.monotonic() + timeout_s
    while line not in log.read_text():
        if time.monotonic() > deadline or process.poll() is not None:
            raise RuntimeError(f"Ray node did not start; see {log}")
        time.sleep(0.5)


def ranks_from_metrics(out: Path) -> dict[int, str]:
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return {r["rank"]: r["node_id"] for r in records if r["event"] == "rank_start"}


@pytest.mark.timeout(480)  # includes the 3-node fixture if this runs first
@pytest.mark.parametrize(
    ("cluster", "expected_counts"),
    [
        # 3 workers spread over exactly 2 nodes: 2 + 1, the head node first (plain SPREAD would
        # use all 3 nodes, so this shows the node pins reached Ray).
        (
            "{num_workers: 3, placement: spread, num_nodes: 2, custom_resources: {slot: 1},"
            " memory_per_worker: 100MB}",
            [2, 1],
        ),
        # pack: both workers on one node.
        ("{num_workers: 2, placement: pack, custom_resources: {slot: 1}}", [2]),
    ],
    ids=["spread-over-2-nodes", "pack"],
)
def test_ranks_land_where_the_placement_says(
    tmp_path: Path,
    tiny_bert: Path,
    keyword_data: dict[str, Path],
    three_nodes: dict,
    cluster: str,
    expected_counts: list[int],
) -> None:
    job = write_job(tmp_path, tiny_bert, keyword_data, cluster)
    result = ftlaunch("run", str(job), "--address", three_nodes["address"], env=three_nodes["env"])
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    out = tmp_path / "out"
    summary = json.loads((out / "summary.json").read_text())
    placed = {p["rank"]: p["node_id"] for p in summary["placement"]}
    assert placed == ranks_from_metrics(out)
    assert sorted(placed) == list(range(sum(expected_counts)))
    assert set(placed.values()) <= set(three_nodes["nodes"])
    per_node = Counter(placed.values())
    assert sorted(per_node.values(), reverse=True) == expected_counts, per_node
    if len(expected_counts) > 1:
        assert per_node[three_nodes["head"]] == expected_counts[0]
    assert all(p["hostname"] for p in summary["placement"])


@pytest.mark.timeout(360)  # includes the 3-node fixture if this runs first
def test_impossible_gpu_request_fails_fast_with_what_is_missing(
    tmp_path: Path, tiny_bert: Path, keyword_data: dict[str, Path], three_nodes: dict
) -> None:
    job = write_job(tmp_path, tiny_bert, keyword_data, "{num_workers: 4, gpus_per_worker: 1}")
    started = time.monotonic()
    result = ftlaunch("run", str(job), "--address", three_nodes["address"], env=three_nodes["env"])
    elapsed = time.monotonic() - started
    assert result.returncode == 2, result.stderr[-3000:]
    (line,) = result.stderr.strip().splitlines()
    assert line == (
        "error: cluster.num_workers: needs 4 workers x 1 CPU + 1 GPU; the cluster has 3 node(s) "
        "with 6 CPU, 3 GPU in total and can place at most 3"
    )
    # Python start-up, data cache hit and connect only: the default placement_timeout_s is 600 s.
    assert elapsed < 60, elapsed
    assert not (tmp_path / "out" / "summary.json").exists()


@pytest.mark.timeout(360)  # includes the 3-node fixture if this runs first
def test_busy_cluster_times_out_with_exit_2_and_leaves_nothing_behind(
    tmp_path: Path, tiny_bert: Path, keyword_data: dict[str, Path], three_nodes: dict
) -> None:
    env = dict(os.environ, **three_nodes["env"])
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_ONE_SLOT.format(address=three_nodes["address"])],
        env=env,
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        # Fits the cluster (3 nodes x 2 slots) but not while one slot is held.
        job = write_job(
            tmp_path,
            tiny_bert,
            keyword_data,
            "{num_workers: 3, placement: strict_spread, custom_resources: {slot: 2},"
            " placement_timeout_s: 3}",
        )
        before = json.loads(run_python(CLUSTER_STATE.format(address=three_nodes["address"]), env))
        started = time.monotonic()
        result = ftlaunch("run", str(job), "--address", three_nodes["address"], env=env)
        elapsed = time.monotonic() - started
        assert result.returncode == 2, result.stderr[-3000:]
        (line,) = result.stderr.strip().splitlines()
        assert line.startswith(
            "error: cluster.placement_timeout_s: 3 workers x 1 CPU + 2 slot (STRICT_SPREAD) were "
            "not placed within 3 s; the cluster has "
        ), line
        assert "5 slot free now" in line, line
        assert 3 <= elapsed < 90, elapsed  # bounded by the 3 s, not the default 600 s
        after = json.loads(run_python(CLUSTER_STATE.format(address=three_nodes["address"]), env))
        # Nothing of the run is left: no new actor, no placement group; its probe was removed.
        # (Actors alive before, e.g. Ray Train's detached helpers from earlier runs, may remain.)
        assert set(after["actors"]) <= set(before["actors"]), after["actors"]
        assert set(after["groups"]) <= set(before["groups"]), after["groups"]
        assert set(after["probes"]) == {"REMOVED"}
        assert len(after["probes"]) == len(before["probes"]) + 1
    finally:
        stop_group(holder)
