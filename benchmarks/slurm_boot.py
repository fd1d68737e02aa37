"""SLURM boot time: from `sbatch` (inside `ftlaunch slurm`) to "all N Ray nodes joined" in the job log.

Needs a running SLURM whose nodes can run this checkout (e.g. the local test cluster:
`STATE_DIR=/tmp/slurm-bench NNODES=2 tests/slurm/start-local-slurm.sh`, as root). Each job is
cancelled as soon as its nodes have joined; the log's timestamps split the time into queueing
(sbatch -> script starts), the Ray head, and the other nodes joining.

    python benchmarks/slurm_boot.py [--nodes 2] [--repeats 3]
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cluster.slurm.jobs import TERMINAL_STATES, job_state
from tests.fixtures import ftlaunch, make_keyword_dataset, make_tiny_bert


def event_time(log: str, event: str) -> float | None:
    match = re.search(rf"t=([\d.]+)\] {event}", log)
    return float(match.group(1)) if match else None


def boot_once(job: Path, nodes: int, timeout_s: float = 300) -> dict[str, float]:
    sent = time.time()
    result = ftlaunch("slurm", str(job), "--nodes", str(nodes), cwd=job.parent)
    if result.returncode != 0:
        raise SystemExit(result.stderr.strip())
    job_id = re.search(r"submitted SLURM job (\d+)", result.stdout).group(1)
    log_path = Path(re.search(r"tail -f (\S+)", result.stdout).group(1))
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            log = log_path.read_text() if log_path.exists() else ""
            joined = event_time(log, f"all {nodes} Ray nodes joined")
            if joined:
                return {
                    "queue_s": event_time(log, "job") - sent,
                    "head_s": event_time(log, "Ray head up") - sent,
                    "joined_s": joined - sent,
                }
            time.sleep(0.2)
        raise SystemExit(f"job {job_id}: nodes did not join within {timeout_s}s; see {log_path}")
    finally:
        subprocess.run(["scancel", job_id], check=False)
        for _ in range(60):  # the job's trap tears Ray down and removes its directories
            if job_state(job_id) in TERMINAL_STATES:
                break
            time.sleep(0.5)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--nodes", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="ftl-slurm-bench-") as tmp:
        root = Path(tmp)
        model = make_tiny_bert(root / "bert")
        data = make_keyword_dataset(root / "data")
        runs = []
        for i in range(args.repeats):
            job = root / f"job{i}.yaml"
            job.write_text(
                f"model: {{path: {model}}}\n"
                f"data: {{train: {data['train']}, validation: {data['validation']}, "
                f"test: {data['test']}, max_length: 32}}\n"
                f"cluster: {{num_workers: {args.nodes}}}\noutput: {{dir: {root / f'out{i}'}}}\n"
            )
            runs.append(boot_once(job, args.nodes))
            print(
                f"run {i}: queued {runs[-1]['queue_s']:.1f} s, Ray head {runs[-1]['head_s']:.1f} s, "
                f"all {args.nodes} nodes joined {runs[-1]['joined_s']:.1f} s after sbatch"
            )
            time.sleep(5)  # let the cancelled job's nodes go idle before the next sbatch
    median = statistics.median(r["joined_s"] for r in runs)
    print(f"SLURM boot time, sbatch -> all {args.nodes} Ray nodes joined: median {median:.1f} s")


if __name__ == "__main__":
    main()
