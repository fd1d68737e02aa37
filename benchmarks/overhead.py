"""How much does ftlaunch cost over a hand-written DeepSpeed script?

Trains the same model on the same tokenized data with the same micro-batch, ZeRO stage, sample
order and 2 ranks (CPU, gloo) twice in one invocation:

- `ftlaunch run JOB.yaml` (embedded Ray cluster, Ray Train workers, head-side collector), and
- `torchrun --standalone --nproc-per-node 2 benchmarks/bare_deepspeed.py` (no Ray at all),

and prints
- steady-state seconds per optimizer step of each, and their ratio ftlaunch / bare (goal <= 1.03).
  ftlaunch: the job logs every step (log_every=1), and each "train" record's samples_per_s covers
  exactly that step, so step time = global batch / samples_per_s. Bare: differences of the
  time.time() stamps rank 0 takes after each optimizer step. The first 20% of steps are warm-up
  and skipped; the median of the rest is reported. No evaluation happens inside the timed steps.
- time from command to first optimizer step of each: from the moment the command is spawned to
  the first "train" record (step 1) appearing in ftlaunch's metrics.jsonl (polled every 50 ms),
  resp. to the bare script's first step stamp. Data is tokenized once beforehand into a cache
  both runs share, so neither pays for tokenization.

Inputs: by default the pretrained MiniLM-L6 (alias minilm-l6) on the generated demo dataset;
`--tiny` uses a 2-layer, 32-wide random BERT on a keyword dataset for a fast smoke run. With
`--rounds N` all are run N times, interleaved (A B A B, order reversed every other round), and
the medians are reported. `--variants` adds ftlaunch variants that isolate one cost each (Ray's
metrics, everything the dashboard needs, ranks pinned to cores); for each variant the script also
prints the startup phases and the CPU share of every Ray process during the timed steps
(benchmarks/overhead_probe.py).
It is a benchmark, not a test: it exits 0 whether or not the goal is met (PASS/MISS is printed).

Run:
    python benchmarks/overhead.py [--tiny] [--steps N] [--zero-stage S] [--rounds N] [--keep]
        [--variants ftlaunch,ray-metrics,ray-dashboard,pinned]
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.overhead_probe import PHASE_ORDER, TreeSampler, read_phases  # noqa: E402
from launcher.commands.run import prepare_splits  # noqa: E402
from launcher.config_loading import load_job_config  # noqa: E402
from launcher.models import resolve_model_path  # noqa: E402

GOAL_RATIO = 1.03
GOAL_FIRST_STEP = 1.5
WARMUP_FRACTION = 0.2
POLL_S = 0.05
NUM_WORKERS = 2
MICRO_BATCH = 16
MAX_LENGTH = 64
BARE_SCRIPT = Path(__file__).resolve().parent / "bare_deepspeed.py"
ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    # DeepSpeed compiles its CPU shm-comm op at the first collective (about 2 minutes on 2 cores)
    # into ~/.cache/torch_extensions, keyed by a build file naming this venv's paths: venvs that
    # share the directory rebuild it in turn, and a step waits minutes on its lock. One per venv.
    "TORCH_EXTENSIONS_DIR": str(Path(sys.prefix) / "torch_extensions"),
}
# ftlaunch variants beside the default: (extra CLI arguments, extra environment, pin workers).
# Ray reads RAY_<setting> in every process; the embedded cluster keeps a user's RAY_* settings.
RAY_METRICS_ON = {
    "RAY_enable_metrics_collection": "1",
    "RAY_task_events_report_interval_ms": "1000",
}
VARIANTS: dict[str, tuple[list[str], dict[str, str], bool]] = {
    "ftlaunch": ([], {}, False),
    # Ray's metrics export and task events back on (their defaults before issue 15)
    "ray-metrics": ([], RAY_METRICS_ON, False),
    # everything Ray starts for its dashboard: the dashboard, log monitor, metrics, task events
    "ray-dashboard": (["--set", "cluster.dashboard=true"], {}, False),
    # each rank worker pinned to its own core by this script (sched_setaffinity, every thread)
    "pinned": ([], {}, True),
}


def build_inputs(tiny: bool, work: Path) -> tuple[str, dict[str, Path], str]:
    """(model.path, split files, description): MiniLM + demo data, or the tiny test fixtures."""
    if not tiny:
        try:
            from launcher.data.demo import write_demo_dataset

            return "minilm-l6", write_demo_dataset(work / "data"), "MiniLM-L6 on demo data"
        except ImportError as exc:  # demo data generator not available: tiny fixtures instead
            print(f"note: demo data unavailable ({exc}); using the tiny fixtures", file=sys.stderr)
    from tests.fixtures import make_keyword_dataset, make_tiny_bert

    model_dir = make_tiny_bert(work / "tiny-bert")
    data = make_keyword_dataset(work / "data", n_train=1024, n_val=64, n_test=64)
    return str(model_dir), data, "tiny BERT (2x32) on keyword data"


def write_job(
    work: Path, model_path: str, data: dict[str, Path], steps: int, zero_stage: int, epochs: int
) -> Path:
    job = {
        "name": "overhead-bench",
        "model": {"path": model_path},
        "data": {
            "train": str(data["train"]),
            "validation": str(data["validation"]),
            "test": str(data["test"]),
            "max_length": MAX_LENGTH,
            "cache_dir": str(work / "cache"),
        },
        "training": {
            "epochs": epochs,
            "max_steps": steps,
            "micro_batch_size": MICRO_BATCH,
            "grad_accum": 1,
            "eval_every": steps + 1,  # the only evaluation runs after the last timed step
            "log_every": 1,
            "early_stopping_patience": None,
        },
        "engine": {"zero_stage": zero_stage, "offload": "none"},
        "cluster": {"num_workers": NUM_WORKERS, "cpus_per_worker": 1},
        "output": {"dir": str(work / "runs" / "ftlaunch")},
    }
    path = work / "job.yaml"
    path.write_text(yaml.safe_dump(job, sort_keys=False))
    return path


def build_comm_op() -> None:
    """Compile DeepSpeed's CPU shm-comm op now (once per venv), not inside a timed first step."""
    print("building DeepSpeed's shm-comm op (cached after the first time) ...", file=sys.stderr)
    code = "from deepspeed.ops.op_builder.cpu.comm import ShareMemCommBuilder as B; B().load()"
    try:
        subprocess.run(
            [sys.executable, "-c", code], env=_env(), check=True, capture_output=True, timeout=900
        )
    except subprocess.TimeoutExpired:  # torch waits forever on the lock a killed build left
        lock = Path(_env()["TORCH_EXTENSIONS_DIR"]) / "deepspeed_shm_comm" / "lock"
        raise SystemExit(f"DeepSpeed's op did not build in 900 s; a stale {lock}?") from None


def steady_state(step_seconds: list[float]) -> float:
    """Median seconds per step after skipping the warm-up fraction."""
    skip = math.ceil(WARMUP_FRACTION * len(step_seconds))
    rest = step_seconds[skip:] or step_seconds
    return statistics.median(rest)


def bin_or_module(name: str, module: str) -> list[str]:
    script = Path(sys.executable).parent / name
    return [str(script)] if script.exists() else [sys.executable, "-m", module]


def run_bare(job_path: Path, model_dir: Path, train_dir: Path, steps: int, work: Path) -> dict:
    out = work / "bare_timings.json"
    out.unlink(missing_ok=True)
    log = work / "bare.log"
    launch = time.time()
    cmd = [
        *bin_or_module("torchrun", "torch.distributed.run"),
        "--standalone",
        f"--nproc-per-node={NUM_WORKERS}",
        str(BARE_SCRIPT),
        f"--job={job_path}",
        f"--model-dir={model_dir}",
        f"--train-dir={train_dir}",
        f"--steps={steps}",
        f"--out={out}",
        f"--launch-time={launch!r}",
    ]
    with log.open("w") as fh:
        rc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, env=_env()).returncode
    total = time.time() - launch
    if rc != 0 or not out.is_file():
        raise RuntimeError(f"bare DeepSpeed run failed (exit {rc}); log:\n{_tail(log)}")
    record = json.loads(out.read_text())
    stamps = record["step_times"]
    step_seconds = [stamps[0] - record["engine_ready"]] + [
        b - a for a, b in itertools.pairwise(stamps)
    ]
    return {
        "s_per_step": steady_state(step_seconds),
        "first_step_s": stamps[0] - launch,
        "steps": len(stamps),
        "total_s": total,
    }


def run_ftlaunch(
    job_path: Path, output_dir: Path, global_batch: int, work: Path, variant: str, steps: int
) -> dict:
    args, env, pin = VARIANTS[variant]
    shutil.rmtree(output_dir, ignore_errors=True)
    log = work / "ftlaunch.log"
    cmd = [*bin_or_module("ftlaunch", "launcher.cli"), "run", str(job_path), *args]
    phases: dict[str, float] = {}
    with log.open("w") as fh:
        launch = time.time()
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=_env() | env)
        with TreeSampler(proc.pid, pin_workers=pin) as sampler:
            window = _watch(proc, output_dir, sampler, phases, steps)
            cpu = sampler.window_cpu()
            if sampler.first_raylet is not None:
                phases["raylet"] = sampler.first_raylet
    total = time.time() - launch
    metrics = output_dir / "metrics.jsonl"
    if proc.returncode != 0 or not metrics.is_file():
        raise RuntimeError(f"ftlaunch run failed (exit {proc.returncode}); log:\n{_tail(log)}")
    records = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    train = sorted((r for r in records if r.get("event") == "train"), key=lambda r: r["step"])
    if "step 1" not in phases:  # finished between two polls: no honest time-to-first-step
        print("warning: ftlaunch finished before its first step was seen", file=sys.stderr)
    return {
        "s_per_step": steady_state([global_batch / r["samples_per_s"] for r in train]),
        "first_step_s": phases.get("step 1", launch + float("nan")) - launch,
        "steps": len(train),
        "total_s": total,
        "phases": {k: v - launch for k, v in phases.items()},
        "cpu_share": {k: v / window for k, v in cpu.items()} if window else {},
    }


def _watch(
    proc: subprocess.Popen, output_dir: Path, sampler: TreeSampler, phases: dict, steps: int
) -> float:
    """Poll until the run exits; the steady window runs from the first step after the warm-up
    to the last step. Returns the window's length (0: not seen)."""
    skip = max(1, math.ceil(WARMUP_FRACTION * steps))
    opened = closed = None
    while proc.poll() is None:
        step = read_phases(output_dir, phases)
        if opened is None and step >= skip:
            opened = time.time()
            sampler.mark()
        if opened is not None and closed is None and step >= steps:
            closed = time.time()
            sampler.mark()
        time.sleep(POLL_S)
    return (closed - opened) if opened and closed else 0.0


def _env() -> dict[str, str]:
    return os.environ | ENV


def _tail(path: Path, lines: int = 40) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def median_of(runs: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def report(runs: dict[str, list[dict]], description: str, args: argparse.Namespace) -> None:
    keys = ("s_per_step", "first_step_s", "total_s")
    med = {name: {k: median_of(rs, k) for k in keys} for name, rs in runs.items()}
    bare = med["bare"]
    print()
    print(
        f"overhead benchmark: {description}; {NUM_WORKERS} ranks x micro-batch {MICRO_BATCH}, "
        f"max_length {MAX_LENGTH}, ZeRO-{args.zero_stage}, {args.steps} steps, "
        f"{args.rounds} round(s) interleaved, medians, first {WARMUP_FRACTION:.0%} of steps skipped"
    )
    names = list(runs)
    print(f"{'':28}" + "".join(f"{n:>15}" for n in names))
    for key, label, fmt in (
        ("s_per_step", "steady-state s/step", ".4f"),
        ("first_step_s", "command -> first step (s)", ".2f"),
        ("total_s", "command -> exit (s)", ".1f"),
    ):
        print(f"{label:28}" + "".join(f"{med[n][key]:>15{fmt}}" for n in names))
    for name in names[1:]:
        ratio = med[name]["s_per_step"] / bare["s_per_step"]
        first = med[name]["first_step_s"] / bare["first_step_s"]
        print(
            f"{name}/bare: step time {ratio:.3f} (goal <= {GOAL_RATIO}) "
            f"{'PASS' if ratio <= GOAL_RATIO else 'MISS'}; command to first step {first:.2f} "
            f"(goal <= {GOAL_FIRST_STEP}) {'PASS' if first <= GOAL_FIRST_STEP else 'MISS'}"
        )
    for name in names[1:]:
        report_phases(name, runs[name])
        report_cpu(name, runs[name])


def report_phases(name: str, runs: list[dict]) -> None:
    """Median seconds from the command to the end of each startup phase, and each phase's part."""
    print(f"{name}: startup phases (median s from the command; + since the previous one)")
    # In time order: Ray is launched before the data is checked, so phases may overlap.
    marks = []
    for key, label in PHASE_ORDER:
        values = [r["phases"][key] for r in runs if key in r["phases"]]
        if values:
            marks.append((statistics.median(values), label))
    before = 0.0
    for at, label in sorted(marks):
        print(f"  {label:34}{at:>8.2f}{at - before:>+8.2f}")
        before = at


def report_cpu(name: str, runs: list[dict]) -> None:
    """Median share of one core per process kind during the timed steps."""
    kinds = sorted({k for r in runs for k in r["cpu_share"]})
    shares = {k: statistics.median(r["cpu_share"].get(k, 0.0) for r in runs) for k in kinds}
    print(f"{name}: CPU during the timed steps (% of one core, median over rounds)")
    for kind, share in sorted(shares.items(), key=lambda kv: -kv[1]):
        if share >= 0.001:
            print(f"  {kind:34}{share:>8.1%}")
    ray_own = sum(v for k, v in shares.items() if "RayTrainWorker" not in k)
    print(f"  {'all but the rank workers':34}{ray_own:>8.1%}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="ftlaunch vs bare DeepSpeed: time per step.")
    parser.add_argument("--tiny", action="store_true", help="tiny random BERT (smoke run)")
    parser.add_argument("--steps", type=int, default=60, help="optimizer steps per run")
    parser.add_argument("--zero-stage", type=int, default=2, choices=(0, 1, 2, 3))
    parser.add_argument("--rounds", type=int, default=1, help="alternate bare/ftlaunch N times")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument(
        "--variants",
        default="ftlaunch",
        help=f"comma-separated ftlaunch variants to run beside bare: {', '.join(VARIANTS)}",
    )
    args = parser.parse_args(argv)
    variants = [v for v in args.variants.split(",") if v]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown or not variants:
        parser.error(f"--variants: unknown {unknown}; choose from {', '.join(VARIANTS)}")
    if args.steps < 2:
        parser.error("--steps must be at least 2")

    work = Path(tempfile.mkdtemp(prefix="ftlaunch-overhead-"))
    try:
        model_path, data, description = build_inputs(args.tiny, work)
        # epochs=1 placeholder; resized below once the train split's row count is known
        job_path = write_job(work, model_path, data, args.steps, args.zero_stage, epochs=1)
        job = load_job_config(job_path)
        model_dir = resolve_model_path(job.model.path)
        from rich.console import Console

        _, locations, rows = prepare_splits(job, model_dir, Console(stderr=True, highlight=False))
        train_dir = Path(locations["train"])
        steps_per_epoch = rows // job.global_batch_size()
        if steps_per_epoch == 0:
            raise SystemExit(f"train split of {rows} rows cannot fill one step")
        epochs = math.ceil(args.steps / steps_per_epoch) + 1  # margin: max_steps stops it
        job_path = write_job(work, model_path, data, args.steps, args.zero_stage, epochs)
        job = load_job_config(job_path)

        build_comm_op()
        runs: dict[str, list[dict]] = {name: [] for name in ["bare", *variants]}
        for round_index in range(args.rounds):
            order = list(runs) if round_index % 2 == 0 else list(runs)[::-1]
            for name in order:
                # Other processes on the machine distort the numbers; show how busy it is.
                load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
                print(
                    f"round {round_index + 1}: running {name} (load average {load} on "
                    f"{os.cpu_count()} CPUs) ...",
                    file=sys.stderr,
                    flush=True,
                )
                if name == "bare":
                    result = run_bare(job_path, model_dir, train_dir, args.steps, work)
                else:
                    result = run_ftlaunch(
                        job_path,
                        Path(job.output.dir),
                        job.global_batch_size(),
                        work,
                        name,
                        args.steps,
                    )
                print(
                    f"  {name}: {result['s_per_step']:.4f} s/step, first step after "
                    f"{result['first_step_s']:.2f} s, {result['steps']} steps, "
                    f"exit after {result['total_s']:.1f} s",
                    file=sys.stderr,
                    flush=True,
                )
                runs[name].append(result)
        report(runs, description, args)
    finally:
        if args.keep:
            print(f"work directory kept: {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
