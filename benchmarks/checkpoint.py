"""Checkpoint data path, measured side by side in one run (issue 4's three ratios).

1. transfer to the head / plain local copy: the same checkpoint files streamed through the
   head-side collector actor in 4 MiB chunks (what a rank on another node does) versus
   `shutil.copyfile` on this disk. Goal >= 0.5. Here the "remote" rank is on the same node, so
   this measures the chunked Ray path, not a network.
2. optimizer blocked per save / writing the same bytes to local disk: `blocked_s` of each save
   in the run's metrics.jsonl (training stops only while the state is snapshotted into shared
   memory; the saver process's write, the transfer to the head and the commit run in the
   background; `save_overlap` says how long a save waited for the previous one) versus an
   fsynced local copy of the committed checkpoint's files. Goal <= 0.25. Needs the short run
   (no --checkpoint).
3. export peak RSS / exported weights: `trainer.consolidate` streaming write of the consolidated
   model, peak RSS above the post-import baseline in a fresh process. Goal <= 1.3.

Input: a checkpoint directory (checkpoints/step-N of any run). Without one, a short ZeRO-3
MiniLM run is made first (about a minute).

Run:
    python benchmarks/checkpoint.py [--checkpoint RUN_DIR/checkpoints/step-N] [--chunk-mb 4]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import secrets
import shutil
import statistics
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
from trainer.export.consolidate import export_names, write_safetensors
from trainer.export.readers import checkpoint_tensors
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


def overlap_per_save(checkpoint: Path) -> list[float]:
    """`save_overlap` of every save: seconds it waited for the previous save's write."""
    metrics = checkpoint.parents[1] / "metrics.jsonl"
    records = [json.loads(line) for line in metrics.read_text().splitlines()]
    return [r.get("save_overlap", 0.0) for r in records if r.get("event") == "checkpoint"]


def rank_parts(checkpoint: Path, ranks: int) -> list[list[Path]]:
    """The checkpoint's files dealt to `ranks` senders, largest first, each to the lightest."""
    parts: list[list[Path]] = [[] for _ in range(ranks)]
    loads = [0] * ranks
    files = sorted(
        (p for p in checkpoint.rglob("*") if p.is_file()), key=lambda p: -p.stat().st_size
    )
    for path in files:
        lightest = loads.index(min(loads))
        parts[lightest].append(path)
        loads[lightest] += path.stat().st_size
    return parts


def local_copy_s(checkpoint: Path, target: Path) -> float:
    """An fsynced copy of every file (what a rank on the head pays to land its bytes)."""
    started = time.perf_counter()
    for path in (p for p in checkpoint.rglob("*") if p.is_file()):
        copy = target / path.relative_to(checkpoint)
        copy.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, copy)
        with copy.open("rb") as fh:
            os.fsync(fh.fileno())
    elapsed = time.perf_counter() - started
    shutil.rmtree(target)
    return elapsed


def sha256_s(checkpoint: Path) -> float:
    """One sha256 pass over the files from the page cache, on one thread: the head's share of
    the work that a local copy does not do (its ceiling on a CPU-bound box)."""
    started = time.perf_counter()
    for path in (p for p in checkpoint.rglob("*") if p.is_file()):
        with path.open("rb") as fh:
            hashlib.file_digest(fh, "sha256")
    return time.perf_counter() - started


def measure_transfer(
    checkpoint: Path, work: Path, ranks: int, repeats: int, actor_chunk_mb: int
) -> dict[str, list[float] | float | int]:
    """Local fsynced copies and transfers to the head's collector, interleaved `repeats` times
    (so both see the same load); the transfer ends when the head has fsynced every file."""
    os.environ.setdefault("RAY_AUTH_TOKEN", secrets.token_hex(32))
    import cluster  # noqa: F401, I001  (sets RAY_AUTH_MODE before ray is imported)
    import ray
    from cluster.head.collector import collector_actor

    parts = rank_parts(checkpoint, ranks)
    total = sum(p.stat().st_size for part in parts for p in part)
    out: dict[str, list[float]] = {
        "local_copy_s": [],
        "transfer_s": [],
        "actor_s": [],
        "sha256_s": [],
    }
    ray.init(num_cpus=ranks, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    try:
        collector = collector_actor(work / "head-run", work / "head-checkpoints", 2, None)
        send = ray.remote(num_cpus=1)(_send_part)
        # Warm-up: the ranks' worker processes start (and import) outside the timed rounds.
        ray.get([send.remote(collector, "step-0", r, [], str(checkpoint)) for r in range(ranks)])
        for step in range(1, repeats + 1):
            out["local_copy_s"].append(local_copy_s(checkpoint, work / "copy"))
            out["sha256_s"].append(sha256_s(checkpoint))
            tag = f"step-{step}"
            started = time.perf_counter()
            ray.get(
                [
                    send.remote(collector, tag, r, list(map(str, part)), str(checkpoint))
                    for r, part in enumerate(parts)
                ]
            )
            out["transfer_s"].append(time.perf_counter() - started)
            shutil.rmtree(work / "head-checkpoints" / f".tmp-{tag}")
            if actor_chunk_mb:
                stream = ray.remote(num_cpus=1)(_stream_part)
                started = time.perf_counter()
                ray.get(
                    [
                        stream.remote(
                            collector, list(map(str, part)), str(checkpoint), actor_chunk_mb
                        )
                        for part in parts
                    ]
                )
                out["actor_s"].append(time.perf_counter() - started)
                shutil.rmtree(work / "head-run" / "actor")
    finally:
        ray.shutdown()
    return out | {"bytes": total, "files": sum(map(len, parts))}


def _send_part(collector, tag: str, rank: int, paths: list[str], root: str) -> int:
    """What a rank on another node does: its files, linked into a scratch dir, to the head."""
    import tempfile

    import ray

    from cluster.auth.channel import key_from_token
    from cluster.auth.token import load_token
    from cluster.worker.stream import send_dir

    with tempfile.TemporaryDirectory(dir=Path(root).parent) as scratch:
        for path in map(Path, paths):
            link = Path(scratch) / path.relative_to(root)
            link.parent.mkdir(parents=True, exist_ok=True)
            os.link(path, link)  # the same bytes, no copy: only the transfer is measured
        route = ray.get(collector.checkpoint_route.remote(tag), timeout=60)
        return send_dir(route, key_from_token(load_token() or ""), tag, rank, Path(scratch))


def _stream_part(collector, paths: list[str], root: str, chunk_mb: int) -> None:
    """The old path, for reference: 4 MiB chunks through the collector actor."""
    from cluster.worker.files import CollectorSink

    sink = CollectorSink(collector, chunk_bytes=chunk_mb << 20)
    for path in map(Path, paths):
        sink.put_file(path, f"actor/{path.relative_to(root).as_posix()}")


def make_synthetic(work: Path, mb: int, ranks: int) -> Path:
    """A checkpoint of `mb` MiB shaped like ZeRO's: per rank one optimizer-state file (3/4 of
    its bytes) and one model-state file, random so nothing compresses or dedups."""
    root = work / "synthetic" / "step-1"
    per_rank = (mb << 20) // ranks
    for rank in range(ranks):
        for name, size in (
            (f"ds/optim_states_rank{rank}.pt", per_rank * 3 // 4),
            (f"ds/model_states_rank{rank}.pt", per_rank // 4),
        ):
            path = root / name
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("wb") as fh:
                for left in range(size, 0, -(16 << 20)):
                    fh.write(os.urandom(min(left, 16 << 20)))
    return root


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
        "--synthetic-mb",
        type=int,
        default=0,
        help="Measure the transfer on a random checkpoint of this many MiB instead (no training run, no export).",
    )
    parser.add_argument("--ranks", type=int, default=2, help="Ranks sending at once.")
    parser.add_argument("--repeats", type=int, default=3, help="Interleaved copy/transfer rounds.")
    parser.add_argument(
        "--actor-chunk-mb",
        type=int,
        default=0,
        help="Also time the old path: chunks of this many MiB through the collector actor (0: no).",
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="ftlaunch-bench-ckpt-") as tmp:
        work = Path(tmp)
        if args.synthetic_mb:
            checkpoint = make_synthetic(work, args.synthetic_mb, args.ranks)
        else:
            checkpoint = args.checkpoint or make_checkpoint(work)
        made = not (args.checkpoint or args.synthetic_mb)
        blocked = blocked_per_save(checkpoint) if made else []
        overlaps = overlap_per_save(checkpoint) if made else []
        transfer = measure_transfer(checkpoint, work, args.ranks, args.repeats, args.actor_chunk_mb)
        export = None if args.synthetic_mb else measure_export(checkpoint, work)
    report(checkpoint, args.ranks, transfer, blocked, export)
    if overlaps:
        print(
            f"save_overlap (waited for the previous write): {', '.join(f'{o:.2f}' for o in overlaps)} s"
        )


def report(
    checkpoint: Path, ranks: int, transfer: dict, blocked: list[float], export: dict | None
) -> None:
    mb = transfer["bytes"] / 2**20
    local_s, transfer_s = (
        statistics.median(transfer["local_copy_s"]),
        statistics.median(transfer["transfer_s"]),
    )
    ratio = local_s / transfer_s
    print(
        f"checkpoint {checkpoint.name}: {mb:.1f} MiB in {transfer['files']} files, {ranks} ranks sending"
    )
    print(
        f"local copy (fsynced)           {mb / local_s:8.1f} MiB/s  (rounds: {', '.join(f'{t:.2f}' for t in transfer['local_copy_s'])} s)"
    )
    print(
        f"transfer over the TCP stream   {mb / transfer_s:8.1f} MiB/s  (rounds: {', '.join(f'{t:.2f}' for t in transfer['transfer_s'])} s)"
        f"   ratio {ratio:.2f}  (goal >= 0.9: {'PASS' if ratio >= 0.9 else 'MISS'})"
    )
    hash_s = statistics.median(transfer["sha256_s"])
    # The head hashes every byte that a local copy only moves; its hashing threads run on at most
    # this many cores at once, so the transfer cannot beat hash_s / parallel.
    parallel = min(transfer["files"], ranks * 4, os.cpu_count() or 1)
    ceiling = min(1.0, local_s * parallel / hash_s)
    print(
        f"sha256 alone, one thread       {mb / hash_s:8.1f} MiB/s  (rounds: {', '.join(f'{t:.2f}' for t in transfer['sha256_s'])} s)"
        f"   ceiling of the ratio with {parallel} hashing threads: {ceiling:.2f}"
    )
    if transfer["actor_s"]:
        actor_s = statistics.median(transfer["actor_s"])
        print(
            f"old path: chunks via the actor {mb / actor_s:8.1f} MiB/s   ratio {local_s / actor_s:.2f}"
        )
    if blocked:
        mean_blocked = sum(blocked) / len(blocked)
        blocked_ratio = mean_blocked / local_s
        print(
            f"optimizer blocked per save  {mean_blocked:8.3f} s (saves: {', '.join(f'{b:.2f}' for b in blocked)})"
            f" vs {local_s:.3f} s local write   ratio {blocked_ratio:.2f}"
            f"  (goal <= 0.25: {'PASS' if blocked_ratio <= 0.25 else 'MISS'})"
        )
    if export:
        rss_ratio = (export["peak_mb"] - export["base_mb"]) / export["weights_mb"]
        print(
            f"export: weights {export['weights_mb']:.1f} MB, peak RSS {export['peak_mb']:.0f} MB "
            f"(after imports {export['base_mb']:.0f} MB)   ratio {rss_ratio:.2f}  (goal <= 1.3: {'PASS' if rss_ratio <= 1.3 else 'MISS'})"
        )


if __name__ == "__main__":
    main()
