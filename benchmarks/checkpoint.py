"""Checkpoint data path, measured side by side in one run (issue 4's three ratios).

1. transfer to the head / plain local copy: the same checkpoint files streamed through the
   head-side collector actor in 4 MiB chunks (what a rank on another node does) versus
   `shutil.copyfile` on this disk. Goal >= 0.5. Here the "remote" rank is on the same node, so
   this measures the chunked Ray path, not a network.
2. optimizer blocked per save / writing the same bytes to local disk: `blocked_s` of each save
   in the run's metrics.jsonl (training stops for the local DeepSpeed save only; the transfer
   to the head and the commit run in the background) versus an fsynced local copy of the
   committed checkpoint's files. Goal <= 1.0. Needs the short run (no --checkpoint).
3. export peak RSS / exported weights: `trainer.consolidate` streaming write of the consolidated
   model, peak RSS above the post-import baseline in a fresh process. Goal <= 1.3.

Input: a checkpoint directory (checkpoints/step-N of any run). Without one, a short ZeRO-3
MiniLM run is made first (about a minute).

Run:
    python benchmarks/checkpoint.py [--checkpoint RUN_DIR/checkpoints/step-N] [--chunk-mb 4]
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

EXPORT_RSS = """
import json, resource, sys
import torch, transformers, deepspeed
from pathlib import Path
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
from trainer.export.consolidate import checkpoint_tensors, export_names, write_safetensors
entries = list(export_names(checkpoint_tensors(Path(sys.argv[1]) / "ds")))
size = write_safetensors(Path(sys.argv[2]), entries)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"base_mb": base, "peak_mb": peak, "weights_mb": size / 2**20}))
"""


def make_checkpoint(work: Path) -> Path:
    out = work / "run"
    subprocess.run(
        [sys.executable, "-m", "launcher.cli", "demo-data", "--out", str(work / "data")],
        cwd=REPO,
        check=True,
        capture_output=True,
    )
    sets = {
        "data.train": work / "data/train.jsonl",
        "data.validation": work / "data/validation.jsonl",
        "data.test": work / "data/test.jsonl",
        "output.dir": out,
        "training.max_steps": 6,
        "training.eval_every": 1000,
        "training.checkpoint_every": 2,
        "output.keep_last": 3,
        "engine.zero_stage": 3,
    }
    args = [a for k, v in sets.items() for a in ("--set", f"{k}={v}")]
    subprocess.run(
        [sys.executable, "-m", "launcher.cli", "run", "configs/examples/demo-minilm.yaml", *args],
        cwd=REPO,
        check=True,
        capture_output=True,
    )
    return out / "checkpoints" / "step-6"


def blocked_per_save(checkpoint: Path) -> list[float]:
    """`blocked_s` of every save of the run that wrote `checkpoint` (from its metrics.jsonl)."""
    metrics = checkpoint.parents[1] / "metrics.jsonl"
    records = [json.loads(line) for line in metrics.read_text().splitlines()]
    return [r["blocked_s"] for r in records if r.get("event") == "checkpoint"]


def measure_transfer(checkpoint: Path, work: Path, chunk_mb: int) -> dict[str, float]:
    os.environ.setdefault("RAY_AUTH_TOKEN", secrets.token_hex(32))
    import cluster  # noqa: F401, I001  (sets RAY_AUTH_MODE before ray is imported)
    import ray
    from cluster.head.collector import collector_actor

    files = [p for p in checkpoint.rglob("*") if p.is_file()]
    total = sum(p.stat().st_size for p in files)
    started = time.perf_counter()
    for path in files:
        target = work / "copy" / path.relative_to(checkpoint)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
        with target.open("rb") as fh:
            os.fsync(fh.fileno())
    local_s = time.perf_counter() - started

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    try:
        collector = collector_actor(work / "head-run", work / "head-checkpoints", 2, None)
        remote = ray.remote(num_cpus=1)(_stream_all)
        started = time.perf_counter()
        ray.get(remote.remote(collector, [str(p) for p in files], str(checkpoint), chunk_mb))
        transfer_s = time.perf_counter() - started
    finally:
        ray.shutdown()
    return {"bytes": total, "files": len(files), "local_copy_s": local_s, "transfer_s": transfer_s}


def _stream_all(collector, paths: list[str], root: str, chunk_mb: int) -> None:
    import ray

    from cluster.worker.files import CollectorSink

    sink = CollectorSink(collector, chunk_bytes=chunk_mb << 20)
    for path in map(Path, paths):
        name = path.relative_to(root).as_posix()
        sink.stream_file(path, ray.get(collector.begin_checkpoint_file.remote("bench", name)))


def measure_export(checkpoint: Path, work: Path) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, "-c", EXPORT_RSS, str(checkpoint), str(work / "exported.safetensors")],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
        env=dict(os.environ, HF_HUB_OFFLINE="1"),
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, help="A checkpoints/step-N directory.")
    parser.add_argument(
        "--chunk-mb", type=int, default=4, help="Transfer chunk size (ftlaunch uses 4)."
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="ftlaunch-bench-ckpt-") as tmp:
        work = Path(tmp)
        checkpoint = args.checkpoint or make_checkpoint(work)
        blocked = [] if args.checkpoint else blocked_per_save(checkpoint)
        transfer = measure_transfer(checkpoint, work, args.chunk_mb)
        export = measure_export(checkpoint, work)
    mb = transfer["bytes"] / 2**20
    local_rate, transfer_rate = mb / transfer["local_copy_s"], mb / transfer["transfer_s"]
    ratio = transfer_rate / local_rate
    rss_ratio = (export["peak_mb"] - export["base_mb"]) / export["weights_mb"]
    print(f"checkpoint {checkpoint.name}: {mb:.1f} MB in {transfer['files']} files")
    print(f"local copy (fsynced)        {local_rate:8.1f} MB/s")
    print(
        f"transfer via head collector {transfer_rate:8.1f} MB/s   ratio {ratio:.2f}  (goal >= 0.5: {'PASS' if ratio >= 0.5 else 'MISS'})"
    )
    if blocked:
        mean_blocked = sum(blocked) / len(blocked)
        blocked_ratio = mean_blocked / transfer["local_copy_s"]
        print(
            f"optimizer blocked per save  {mean_blocked:8.3f} s (saves: {', '.join(f'{b:.2f}' for b in blocked)})"
            f" vs {transfer['local_copy_s']:.3f} s local write   ratio {blocked_ratio:.2f}"
            f"  (goal <= 1.0: {'PASS' if blocked_ratio <= 1.0 else 'MISS'})"
        )
    print(
        f"export: weights {export['weights_mb']:.1f} MB, peak RSS {export['peak_mb']:.0f} MB "
        f"(after imports {export['base_mb']:.0f} MB)   ratio {rss_ratio:.2f}  (goal <= 1.3: {'PASS' if rss_ratio <= 1.3 else 'MISS'})"
    )


if __name__ == "__main__":
    main()
