"""The head's control plane at scale: the real collector actor (with its watchdog) driven by many
simulated ranks, on one machine.

    python benchmarks/control_plane.py --ranks 1024 [--ranks-per-node 8] [--seconds 60]

Simulated nodes (a few Ray actors, each playing many nodes) send what real node agents send:
one heartbeat batch per node per second, with one beat per rank of the real shape. Rank 0 sends
a gathered metrics window (per-rank lists of `--ranks` entries) every `--window-s`, and every
rank submits a checkpoint and later asks for its commit result every `--checkpoint-s`. After a
warm-up, the head's CPU share is the collector process's CPU time over the wall time. Then one
rank goes silent and the latency until the watchdog names it is measured.
See docs/control-plane.md for the scaling argument these figures check.
"""

from __future__ import annotations

import argparse
import os
import pickle
import secrets
import socket
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

# cluster first: it sets RAY_AUTH_MODE=token, which Ray reads when it is imported (below, lazily)
from cluster.head.collector import Liveness, collector_actor


def beat(rank: int, seq: int, step: int) -> dict[str, Any]:
    """What a NodeAgent forwards per rank (cluster/worker/heartbeat.py, node_agent.py)."""
    return {
        "rank": rank,
        "pid": 100_000 + rank,
        "seq": seq,
        "phase": "forward",
        "step": step,
        "in_phase_s": 0.012,
        "step_time_s": 0.25,
        "process": "S",
        "host": f"node-{rank // 8}",
    }


def window(ranks: int, step: int, steps_per_window: int) -> dict[str, Any]:
    """A gathered metrics window of `ranks` ranks (trainer/loop/window.py's record)."""
    per_rank = [0.25] * ranks
    return {
        "event": "train",
        "step": step,
        "loss": 0.5,
        "samples_per_s": 1000.0,
        "tokens_per_s": 1e5,
        "window_s": 0.25 * steps_per_window,
        "rank_loss": per_rank,
        "rank_data_wait_s": per_rank,
        "rank_busy_s": per_rank,
        "rank_peak_rss_mb": per_rank,
        "rank_step_times_s": [[0.25] * steps_per_window for _ in range(ranks)],
    }


class SimulatedNodes:
    """Plays a set of nodes: their agents' heartbeat batches, once a second each."""

    def __init__(self, collector: Any, nodes: dict[str, list[int]]) -> None:
        self.collector, self.nodes = collector, nodes

    def run(self, seconds: float, silent: tuple[int, float] | None) -> int:
        """Send for `seconds`; rank `silent[0]` stops beating `silent[1]` s in. Returns calls."""
        import ray

        started, calls, interval = time.monotonic(), 0, 1.0
        while (elapsed := time.monotonic() - started) < seconds:
            seq = int(elapsed) + 1  # ranks beat once a second; the agents forward the newest
            refs = []
            for node, ranks in self.nodes.items():
                beats = []
                for rank in ranks:
                    frozen = silent and rank == silent[0] and elapsed > silent[1]
                    beats.append(beat(rank, 1 if frozen else seq, seq))
                refs.append(self.collector.heartbeats.remote(node, beats))
            interval = max(reply[1] for reply in ray.get(refs, timeout=30))
            calls += len(refs)
            time.sleep(max(0.0, started + elapsed + interval - time.monotonic()))
        return calls


def collector_process() -> psutil.Process:
    """Ours: among this driver's descendants (its Ray), not another Ray's on the machine."""
    for process in psutil.Process().children(recursive=True):
        if "ray::RunCollector" in " ".join(process.cmdline()):
            return process
    raise RuntimeError("no collector process found")


def drive(args: argparse.Namespace, collector: Any, run_dir: Path) -> dict[str, float]:
    import ray

    simulated: Any = ray.remote(num_cpus=0)(SimulatedNodes)
    nodes = {f"node-{n}": list(range(n * args.ranks_per_node, (n + 1) * args.ranks_per_node))
             for n in range(args.ranks // args.ranks_per_node)}  # fmt: skip
    names = sorted(nodes)
    shares = [names[i :: args.clients] for i in range(args.clients)]
    silent_rank, silent_at = args.ranks - 1, args.seconds + args.warmup
    clients = [simulated.remote(collector, {n: nodes[n] for n in share}) for share in shares]
    total = args.seconds + args.warmup + args.heartbeat_timeout + 10
    running = [c.run.remote(total, (silent_rank, silent_at)) for c in clients]
    head = collector_process()
    time.sleep(args.warmup)
    cpu0, wall0 = sum(head.cpu_times()[:2]), time.monotonic()
    step, next_window, next_ckpt = 0, 0.0, 0.0
    while time.monotonic() - wall0 < args.seconds:
        now = time.monotonic() - wall0
        if now >= next_window:
            step += 8
            collector.report.remote(window(args.ranks, step, 8))
            next_window += args.window_s
        if now >= next_ckpt:
            tag = f"step-{step}"
            state = {"step": step, "world_size": args.ranks, "run_id": "bench"}
            ray.get([collector.checkpoint_submitted.remote(tag, r, state if r == 0 else None)
                     for r in range(args.ranks)], timeout=120)  # fmt: skip
            ray.get(
                [collector.checkpoint_status.remote(tag) for _ in range(args.ranks)], timeout=120
            )
            next_ckpt += args.checkpoint_s
        collector.drain.remote()
        time.sleep(0.2)
    cpu, wall = sum(head.cpu_times()[:2]) - cpu0, time.monotonic() - wall0
    silenced = wall0 - args.warmup + silent_at  # when the silent rank's seq froze (approx.)
    named = None
    while named is None and time.monotonic() - silenced < args.heartbeat_timeout + 30:
        for record in ray.get(collector.drain.remote(), timeout=30):
            if record.get("event") == "stalled" and record.get("ranks") == [silent_rank]:
                named = time.monotonic() - silenced
        time.sleep(0.05)
    calls = sum(ray.get(running, timeout=total + 60))
    batch = pickle.dumps([beat(r, 1, 1) for r in range(args.ranks_per_node)])
    return {
        "cpu_share": cpu / wall,
        "calls_per_s": calls / total,
        "batch_bytes": len(batch),
        "window_bytes": len(pickle.dumps(window(args.ranks, 8, 8))),
        "named_after_s": named if named is not None else float("nan"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ranks", type=int, default=1024)
    parser.add_argument("--ranks-per-node", type=int, default=8)
    parser.add_argument("--clients", type=int, default=4, help="processes playing the nodes")
    parser.add_argument("--seconds", type=float, default=60.0, help="measured window")
    parser.add_argument("--warmup", type=float, default=10.0)
    parser.add_argument("--window-s", type=float, default=10.0, help="metrics window period")
    parser.add_argument("--checkpoint-s", type=float, default=30.0, help="checkpoint period")
    parser.add_argument("--heartbeat-timeout", type=float, default=10.0)
    args = parser.parse_args()
    os.environ.setdefault("RAY_AUTH_TOKEN", secrets.token_hex(32))  # as the launcher's Ray
    import ray

    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, logging_level="ERROR")
    with tempfile.TemporaryDirectory(prefix="ftl-bench-") as tmp:
        run_dir = Path(tmp)
        liveness = Liveness(args.heartbeat_timeout, None, str(run_dir / "stacks"))
        collector = collector_actor(
            run_dir / "run", run_dir / "checkpoints", 2, None, liveness=liveness
        )
        figures = drive(args, collector, run_dir)
    ray.shutdown()
    nodes = args.ranks // args.ranks_per_node
    print(f"control plane on {socket.gethostname()}: {args.ranks} ranks on {nodes} nodes, "
          f"1 s heartbeats, heartbeat_timeout_s {args.heartbeat_timeout:g}")  # fmt: skip
    print(f"  heartbeat batches at the head: {figures['calls_per_s']:.0f}/s "
          f"({figures['batch_bytes']} B each, {figures['calls_per_s'] * figures['batch_bytes'] / 1e3:.0f} kB/s)")  # fmt: skip
    print(f"  metrics window: {figures['window_bytes'] / 1e3:.0f} kB every {args.window_s:g} s; "
          f"checkpoint: {args.ranks} submissions + {args.ranks} result queries every {args.checkpoint_s:g} s")  # fmt: skip
    print(f"  head (collector) CPU: {figures['cpu_share']:.1%} of one core (goal < 5%)")
    print(f"  silent -> named: {figures['named_after_s']:.1f} s "
          f"(goal <= {args.heartbeat_timeout + 5:g} s)")  # fmt: skip


if __name__ == "__main__":
    main()
