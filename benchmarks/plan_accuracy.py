"""How close `ftlaunch plan` comes to what a run measures, cell by cell, on CPU.

Each cell is a real `ftlaunch run` (embedded Ray, DeepSpeed over gloo) of a few optimizer steps;
its summary.json holds the plan's per-rank peak next to the measured one (the largest peak
resident memory of any rank), so the plan is the same code the pre-run check uses. Models are
randomly initialised here, never downloaded: a tiny BERT (1M parameters) and a BERT-large shape
(335M). The grid: both models x ZeRO 0-3 x 1 and 2 workers x micro-batch 1 and 8 x gradient
checkpointing off and on, sequence length 16.

Prints planned / measured per cell, the p90 of |planned - measured| / measured, and the worst
cell measured above its plan. Goal: p90 <= 15%, no cell measured more than 20% above its plan.

    python benchmarks/plan_accuracy.py                       # the whole grid (about an hour)
    python benchmarks/plan_accuracy.py --models tiny large --zero 3 --workers 2 --micro 1 --checkpointing off
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

# hidden, layers, heads, intermediate
SHAPES = {"tiny": (32, 2, 2, 64), "large": (1024, 24, 16, 4096)}
SEQUENCE = 16
STEPS = 3


def make_bert(out_dir: Path, shape: tuple[int, int, int, int]) -> Path:
    """A randomly initialised BERT of `shape` with MiniLM's tokenizer (kept between runs)."""
    if (out_dir / "model.safetensors").is_file():
        return out_dir
    from tests.fixtures import make_random_bert

    return make_random_bert(out_dir, *shape)


def run_cell(
    work: Path, model: Path, zero: int, workers: int, micro: int, checkpointing: bool
) -> dict:
    from tests.fixtures import make_keyword_dataset

    data = make_keyword_dataset(work / "data", n_train=64, n_val=16, n_test=16)
    out = work / f"run-{model.name}-z{zero}-w{workers}-m{micro}-c{int(checkpointing)}"
    sets = {
        "model.path": model,
        "data.train": data["train"],
        "data.validation": data["validation"],
        "data.test": data["test"],
        "data.max_length": SEQUENCE,
        "data.cache_dir": work / "cache",
        "training.epochs": 1,
        "training.max_steps": STEPS,
        "training.micro_batch_size": micro,
        "training.eval_batch_size": micro,
        "training.eval_every": 1000,
        "training.log_every": 1,
        "training.gradient_checkpointing": str(checkpointing).lower(),
        "engine.zero_stage": zero,
        "cluster.num_workers": workers,
        "cluster.num_cpus": max(2, workers),
        "output.dir": out,
    }
    job = work / "job.yaml"
    job.write_text("model: {path: x}\ndata: {train: x, validation: y, test: z}\n")
    args = [a for k, v in sets.items() for a in ("--set", f"{k}={v}")]
    started = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-m", "launcher.cli", "run", str(job), *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=1800,
        env=dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1"),
    )
    cell = {"model": model.name, "zero": zero, "workers": workers, "micro": micro,
            "checkpointing": checkpointing, "wall_s": round(time.perf_counter() - started, 1)}  # fmt: skip
    if result.returncode != 0:
        lines = result.stderr.strip().splitlines()
        return cell | {"error": lines[-1] if lines else f"exit {result.returncode}"}
    memory = json.loads((out / "summary.json").read_text())["memory"]
    return cell | {k: memory[k] for k in ("planned_peak_bytes", "measured_peak_bytes", "ratio")}


def report(cells: list[dict]) -> None:
    print(f"{'model':<12}{'zero':>5}{'workers':>8}{'micro':>6}{'ckpt':>6}{'planned MiB':>13}"
          f"{'measured MiB':>14}{'plan/meas':>11}")  # fmt: skip
    errors, worst_over = [], 0.0
    for c in cells:
        head = f"{c['model']:<12}{c['zero']:>5}{c['workers']:>8}{c['micro']:>6}{'on' if c['checkpointing'] else 'off':>6}"
        if "error" in c:
            print(f"{head}  {c['error']}")
            continue
        planned, measured = c["planned_peak_bytes"], c["measured_peak_bytes"]
        errors.append(abs(planned - measured) / measured)
        worst_over = max(worst_over, measured / planned - 1)
        print(f"{head}{planned / 2**20:>13.0f}{measured / 2**20:>14.0f}{planned / measured:>11.3f}")
    if errors:
        errors.sort()
        p90 = errors[min(len(errors) - 1, int(0.9 * len(errors)))]
        print(f"cells: {len(errors)}; p90 error {p90:.1%} (goal <= 15%); worst measured above "
              f"plan {max(worst_over, 0):.1%} (goal <= 20%)")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", nargs="+", default=["tiny", "large"], choices=sorted(SHAPES))
    parser.add_argument("--zero", nargs="+", type=int, default=[0, 1, 2, 3])
    parser.add_argument("--workers", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--micro", nargs="+", type=int, default=[1, 8])
    parser.add_argument("--checkpointing", nargs="+", default=["off", "on"], choices=["off", "on"])
    parser.add_argument("--work", type=Path, default=Path("/tmp/ftlaunch-plan-accuracy"))
    parser.add_argument("--json", type=Path, help="Also write the cells here.")
    args = parser.parse_args()
    models = {name: make_bert(args.work / f"bert-{name}", SHAPES[name]) for name in args.models}
    cells = []
    grid = itertools.product(args.models, args.zero, args.workers, args.micro, args.checkpointing)
    for name, zero, workers, micro, checkpointing in grid:
        cell = run_cell(args.work, models[name], zero, workers, micro, checkpointing == "on")
        print(json.dumps(cell), flush=True)
        cells.append(cell)
    report(cells)
    if args.json:
        args.json.write_text(json.dumps(cells, indent=2))


if __name__ == "__main__":
    main()
