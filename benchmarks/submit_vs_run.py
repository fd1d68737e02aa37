"""Time from `ftlaunch submit` to the first training step, over the time from
`ftlaunch run --address` to the first training step, on the same cluster (issue 5).

Both commands start from a fresh client process and the same tiny job (2 workers, tiny BERT,
a few hundred rows); "first training step" is the moment the first `train` record appears in
`output.dir/.run-*/metrics.jsonl` on the head. The cluster is a local `ray start --head` with
the dashboard and token auth (the tests' fixture). Runs alternate, `--repeats` times each; the
ratio of medians is reported.

Run:
    PYTHONPATH=$PWD python benchmarks/submit_vs_run.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.fixtures import make_keyword_dataset, make_tiny_bert  # noqa: E402
from tests.integration.jobs_cluster import jobs_head  # noqa: E402

JOB = """
name: bench
model: {{path: model}}
data: {{train: data/train.jsonl, validation: data/validation.jsonl, test: data/test.jsonl,
        max_length: 32}}
training: {{epochs: 1, max_steps: 3, micro_batch_size: 8, log_every: 1, eval_every: 3}}
cluster: {{num_workers: 2}}
output: {{dir: {out}}}
"""


def time_to_first_step(command: list[str], out: Path, cwd: Path, env: dict[str, str]) -> float:
    started = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "launcher.cli", *command],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    first = None
    while proc.poll() is None or first is None:
        if first is None and any(
            '"event": "train"' in p.read_text() for p in out.glob(".run-*/metrics.jsonl")
        ):
            first = time.perf_counter() - started
        if proc.poll() is not None and first is None:
            committed = out / "metrics.jsonl"
            if committed.is_file() and '"event": "train"' in committed.read_text():
                first = time.perf_counter() - started  # finished between two polls
            else:
                raise RuntimeError(proc.stdout.read() if proc.stdout else "no output")
        time.sleep(0.1)
    output = proc.stdout.read() if proc.stdout else ""
    if proc.wait() != 0:
        raise RuntimeError(output[-3000:])
    return first


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="ftl-bench-") as tmp:
        root = Path(tmp)
        project = root / "project"
        make_tiny_bert(project / "model")
        make_keyword_dataset(project / "data", n_train=128, n_val=32, n_test=32)
        with jobs_head(root, root / "unused-hidden") as head:
            env = dict(
                os.environ,
                PYTHONPATH=str(REPO),
                RAY_AUTH_MODE="token",
                RAY_AUTH_TOKEN=head["RAY_AUTH_TOKEN"],
                HF_HUB_OFFLINE="1",
                TRANSFORMERS_OFFLINE="1",
            )
            times: dict[str, list[float]] = {"submit": [], "run": []}
            for i in range(args.repeats):
                for kind in ("run", "submit"):
                    out = root / f"out-{kind}-{i}"
                    job = project / f"job-{kind}-{i}.yaml"
                    job.write_text(JOB.format(out=out))
                    command = (
                        ["submit", job.name, "--address", head["url"], "--follow"]
                        if kind == "submit"
                        else ["run", job.name, "--address", head["address"]]
                    )
                    seconds = time_to_first_step(command, out, project, env)
                    times[kind].append(seconds)
                    print(f"{kind:6s} #{i}: first training step after {seconds:.1f} s", flush=True)
    submit, run = statistics.median(times["submit"]), statistics.median(times["run"])
    print(f"median submit {submit:.1f} s, run {run:.1f} s, ratio submit/run {submit / run:.2f}")


if __name__ == "__main__":
    main()
