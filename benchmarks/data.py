"""How fast, how lean and how quick to start is ftlaunch's shard reader (trainer/data/split.py)?

On one generated tokenized split of `--gb` GiB (default 1.0) in ftlaunch's exact shard format
(written by `launcher.prepare._ShardWriter` + `ShardManifest`: random int32 token ids, lengths
uniform in 32..512, labels 0..2, sequential sample ids, 1024-row record batches, 64 MB shards;
deterministic from a fixed seed, generated once and cached under `--workdir`), it measures:

- raw scan: `pa.memory_map` + `pa.ipc.open_file` over every shard, each record batch's
  input_ids values buffer summed with numpy (forces every page to be read). Tokens/s.
- ftlaunch reader, one rank: `ShardedSplit(LocalShardStore(dir))`, a shuffled training epoch
  (`epoch_batches(epoch=0, seed=0, world_size=1, rank=0, micro=B, train=True)`) iterated through
  `iter_batches` (prefetch thread), i.e. padded int64 torch tensors. Tokens/s = sum of
  attention_mask / wall time from constructing the store to the last batch. Goal: >= 0.8x raw.
  Time to first batch: constructing the store to receiving the first Batch (goal < 1 s).
  Run in a fresh subprocess, so peak RSS (ru_maxrss) is the reader's alone; also reported as the
  increase over the RSS right after imports (torch + pyarrow). Goal: < 300 MB.
- Hugging Face `datasets`: the same data as a `Dataset` (one IPC *stream* copy of each shard,
  which is what `Dataset.from_file` memory-maps, concatenated), shuffled like a training epoch
  (`shuffle(seed=0)`), `with_format("torch")`, `ds.iter(batch_size=B)`, each batch padded to its
  longest row with `pad_sequence` plus an attention mask (the same ready-to-use tensors). Limited
  to the first `--hf-rows` rows (default 200k) because it is slow; the reader's time over the
  same number of rows is taken from the same epoch run. Goal: reader >= 2.0x datasets.
- head-only streaming: an embedded single-node Ray cluster, the ShardServer actor
  (`cluster.shard_server.shard_server_actor`) and a Ray task acting as the remote worker, reading
  the epoch through `ShardedSplit(HeadShardStore(server, dir))` for `--head-rows` rows. The task
  runs on the same machine (there is one node), so this measures the serialization + Ray object
  transfer path, not a network. Ratio to the local reader over the same rows.

Every measurement is warm (the page cache is filled by an untimed pass first). When
/proc/sys/vm/drop_caches is writable, raw scan and reader are also measured cold (`--no-cold`
skips that). Each measurement runs in its own subprocess. The machine's load average is printed
with the results. It is a benchmark, not a test: it exits 0 whether or not goals are met.

Run:
    python benchmarks/data.py [--gb 1.0] [--batch-size 32] [--workdir /tmp/ftlaunch-bench-data]
                              [--skip-datasets] [--skip-head] [--no-cold]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import secrets
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from launcher.data.tokenize import _ShardWriter  # noqa: E402
from trainer.formats.shards import (  # noqa: E402
    MANIFEST_FORMAT_VERSION,
    MANIFEST_NAME,
    SHARD_SCHEMA,
    ShardManifest,
)

SEED = 1234
VOCAB = 30522
PAD_ID = 0
MIN_LEN, MAX_LEN = 32, 512
BLOCK_ROWS = 1024
NUM_LABELS = 3
SHARD_BYTES = 64 << 20
GOAL_RAW_RATIO = 0.8
GOAL_HF_RATIO = 2.0
GOAL_TTFB_S = 1.0
GOAL_RSS_MB = 300.0


# ---------------------------------------------------------------------------- data generation


def split_dir(workdir: Path, gb: float) -> Path:
    return workdir / f"split-{gb:g}gib-seed{SEED}-len{MIN_LEN}-{MAX_LEN}-shard{SHARD_BYTES >> 20}mb"


def generate(directory: Path, gb: float) -> ShardManifest:
    """Write the synthetic split once (streamed, a block at a time); reuse it afterwards."""
    if (directory / MANIFEST_NAME).is_file():
        return ShardManifest.read(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = directory.with_name(f".{directory.name}.tmp-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    rng = np.random.default_rng(SEED)
    writer = _ShardWriter(staging, SHARD_BYTES)
    target, written = int(gb * (1 << 30)), 0
    started = time.perf_counter()
    while written < target:
        lengths = rng.integers(MIN_LEN, MAX_LEN + 1, size=BLOCK_ROWS, dtype=np.int32)
        offsets = np.zeros(BLOCK_ROWS + 1, dtype=np.int32)
        np.cumsum(lengths, out=offsets[1:])
        values = rng.integers(1, VOCAB, size=int(offsets[-1]), dtype=np.int32)
        batch = pa.record_batch(
            [
                pa.array(np.arange(writer.rows, writer.rows + BLOCK_ROWS, dtype=np.int64)),
                pa.ListArray.from_arrays(pa.array(offsets), pa.array(values)),
                pa.array(lengths),
                pa.array(rng.integers(0, NUM_LABELS, size=BLOCK_ROWS, dtype=np.int64)),
            ],
            schema=SHARD_SCHEMA,
        )
        writer.add(batch)
        written += batch.nbytes
    shards = writer.close()
    manifest = ShardManifest(
        format_version=MANIFEST_FORMAT_VERSION,
        split="train",
        source=f"synthetic(seed={SEED}, gib={gb:g})",
        source_sha256="0" * 64,
        tokenizer_fingerprint="synthetic",
        max_length=MAX_LEN,
        text_column="text",
        label_column="label",
        label_names=[f"label{i}" for i in range(NUM_LABELS)],
        pad_token_id=PAD_ID,
        total_rows=writer.rows,
        total_tokens=writer.tokens,
        label_counts=writer.label_counts(NUM_LABELS),
        shards=shards,
        schema_fields={f.name: str(f.type) for f in SHARD_SCHEMA},
    )
    manifest.write(staging)
    os.rename(staging, directory)
    print(f"generated {directory} in {time.perf_counter() - started:.1f}s", flush=True)
    return manifest


def stream_copies(directory: Path, manifest: ShardManifest) -> list[Path]:
    """IPC stream-format copies of the shards (what `datasets.Dataset.from_file` reads)."""
    out = directory.with_name(directory.name + "-hf-stream")
    files = [out / (Path(s.file).stem + ".arrows") for s in manifest.shards]
    if (out / "done").is_file():
        return files
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    for shard, dest in zip(manifest.shards, files, strict=True):
        with pa.memory_map(str(directory / shard.file)) as source:
            reader = pa.ipc.open_file(source)
            with pa.OSFile(str(dest), "wb") as sink, pa.ipc.new_stream(sink, SHARD_SCHEMA) as w:
                for i in range(reader.num_record_batches):
                    w.write_batch(reader.get_batch(i))
    (out / "done").write_text("ok\n")
    return files


# ---------------------------------------------------------------------------- measurements
# Each runs in a fresh subprocess (`--_child NAME`) and prints one JSON line last.


def rss_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def child_raw(directory: Path, _args: argparse.Namespace) -> dict:
    manifest = ShardManifest.read(directory)
    started = time.perf_counter()
    tokens, checksum = 0, 0
    for shard in manifest.shards:
        with pa.memory_map(str(directory / shard.file)) as source:
            reader = pa.ipc.open_file(source)
            for i in range(reader.num_record_batches):
                values = np.asarray(reader.get_batch(i).column("input_ids").values)
                tokens += len(values)
                checksum += int(values.sum())
    elapsed = time.perf_counter() - started
    return {"tokens": tokens, "seconds": elapsed, "tokens_per_s": tokens / elapsed}


def milestone_times(rows: int, tokens: int, marks: list[int], times: dict, elapsed: float) -> None:
    """Record (seconds, rows, tokens) the first time `rows` reaches each mark."""
    for mark in marks:
        if mark not in times and rows >= mark:
            times[mark] = (elapsed, rows, tokens)


def read_epoch(split_factory, batch_size: int, limit_rows: int | None, marks: list[int]) -> dict:
    """Time one shuffled training epoch (or its first `limit_rows` rows) of a ShardedSplit."""
    started = time.perf_counter()
    split = split_factory()
    batches = split.epoch_batches(
        epoch=0, seed=0, world_size=1, rank=0, micro=batch_size, train=True
    )
    if limit_rows is not None:
        batches = batches[: -(-limit_rows // batch_size)]
    rows = tokens = 0
    ttfb = None
    times: dict = {}
    for batch in split.iter_batches(batches):
        if ttfb is None:
            ttfb = time.perf_counter() - started
        tokens += int(batch.attention_mask.sum())
        rows += batch.input_ids.shape[0]
        milestone_times(rows, tokens, marks, times, time.perf_counter() - started)
    elapsed = time.perf_counter() - started
    return {
        "rows": rows,
        "tokens": tokens,
        "seconds": elapsed,
        "tokens_per_s": tokens / elapsed,
        "ttfb_s": ttfb,
        "marks": {str(k): v for k, v in times.items()},
    }


def child_reader(directory: Path, args: argparse.Namespace) -> dict:
    import torch  # noqa: F401  (counted in the import baseline, as in a real worker)

    from trainer.data.split import ShardedSplit
    from trainer.formats.shard_stores import LocalShardStore

    base = rss_mb()
    marks = [int(m) for m in args.marks.split(",") if m]
    result = read_epoch(
        lambda: ShardedSplit(LocalShardStore(directory)), args.batch_size, None, marks
    )
    result.update(rss_after_imports_mb=base, peak_rss_mb=peak_rss_mb())
    result["peak_rss_delta_mb"] = result["peak_rss_mb"] - base
    return result


def child_hf(directory: Path, args: argparse.Namespace) -> dict:
    import datasets
    import torch
    from torch.nn.utils.rnn import pad_sequence

    datasets.disable_progress_bars()
    manifest = ShardManifest.read(directory)
    files = stream_copies(directory, manifest)
    # Warm the page cache for the stream copies (untimed), as the other measurements are warm.
    for file in files:
        with open(file, "rb") as fh:
            while fh.read(16 << 20):
                pass
    started = time.perf_counter()
    ds = datasets.concatenate_datasets([datasets.Dataset.from_file(str(f)) for f in files])
    ds = ds.shuffle(seed=0, keep_in_memory=True)
    ds = ds.with_format("torch", columns=["input_ids", "label", "sample_id"])
    rows = tokens = 0
    ttfb = None
    for batch in ds.iter(batch_size=args.batch_size):
        ids = batch["input_ids"]  # a list of 1-D tensors: the rows are ragged
        lengths = torch.tensor([len(x) for x in ids])
        input_ids = pad_sequence(ids, batch_first=True, padding_value=PAD_ID).long()
        mask = (torch.arange(input_ids.shape[1])[None, :] < lengths[:, None]).long()
        if ttfb is None:
            ttfb = time.perf_counter() - started
        tokens += int(mask.sum())
        rows += input_ids.shape[0]
        if rows >= args.hf_rows:
            break
    elapsed = time.perf_counter() - started
    return {
        "rows": rows,
        "tokens": tokens,
        "seconds": elapsed,
        "tokens_per_s": tokens / elapsed,
        "ttfb_s": ttfb,
        "datasets_version": datasets.__version__,
    }


def child_head(directory: Path, args: argparse.Namespace) -> dict:
    from cluster.head.shard_server import shard_server_actor  # sets RAY_AUTH_MODE=token

    os.environ.setdefault("RAY_AUTH_TOKEN", secrets.token_hex(32))
    import ray

    ray.init(
        address="local",
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        logging_level="ERROR",
        object_store_memory=256 << 20,
    )
    try:
        server = shard_server_actor([str(directory)])

        @ray.remote(num_cpus=1)
        def remote_worker(server, location: str, batch_size: int, rows: int) -> dict:
            import torch  # noqa: F401  (import outside the timed part)

            from cluster.worker.shards import HeadShardStore
            from trainer.data.split import ShardedSplit

            return read_epoch(
                lambda: ShardedSplit(HeadShardStore(server, location)), batch_size, rows, []
            )

        result = ray.get(
            remote_worker.remote(server, str(directory), args.batch_size, args.head_rows)
        )
        result.update(ray.get(server.stats.remote()))
        result["nodes"] = len(ray.nodes())
        return result
    finally:
        ray.shutdown()


CHILDREN = {"raw": child_raw, "reader": child_reader, "hf": child_hf, "head": child_head}


def run_child(name: str, directory: Path, args: argparse.Namespace, extra: list[str]) -> dict:
    command = [
        sys.executable,
        __file__,
        "--_child",
        name,
        "--_dir",
        str(directory),
        "--batch-size",
        str(args.batch_size),
        "--hf-rows",
        str(args.hf_rows),
        "--head-rows",
        str(args.head_rows),
        *extra,
    ]
    proc = subprocess.run(command, capture_output=True, text=True)
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        print(f"[{name}] failed (rc={proc.returncode}):\n{proc.stderr[-3000:]}", file=sys.stderr)
        return {"error": f"rc={proc.returncode}"}
    return json.loads(lines[-1])


def drop_caches() -> bool:
    try:
        subprocess.run(["sync"], check=True)
        with open("/proc/sys/vm/drop_caches", "w") as fh:
            fh.write("3\n")
        return True
    except OSError:
        return False


def warm(directory: Path) -> None:
    for file in sorted(directory.iterdir()):
        with open(file, "rb") as fh:
            while fh.read(16 << 20):
                pass


# ---------------------------------------------------------------------------- report


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("PASS" if ok else "MISS")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gb", type=float, default=1.0, help="dataset size in GiB")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/ftlaunch-bench-data"))
    parser.add_argument("--skip-datasets", action="store_true")
    parser.add_argument("--skip-head", action="store_true")
    parser.add_argument("--no-cold", action="store_true", help="skip the cold-cache runs")
    parser.add_argument("--hf-rows", type=int, default=200_000)
    parser.add_argument("--head-rows", type=int, default=65_536)
    parser.add_argument("--_child", choices=sorted(CHILDREN), help=argparse.SUPPRESS)
    parser.add_argument("--_dir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--marks", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args._child:
        print(json.dumps(CHILDREN[args._child](args._dir, args)), flush=True)
        return 0

    directory = split_dir(args.workdir, args.gb)
    manifest = generate(directory, args.gb)
    size = sum(s.bytes for s in manifest.shards)
    hf_rows = min(args.hf_rows, manifest.total_rows)
    head_rows = min(args.head_rows, manifest.total_rows)
    marks = f"{hf_rows},{head_rows}"
    results: dict[str, dict] = {}

    warm(directory)
    run_child("raw", directory, args, [])  # untimed warm-up of the mapping path
    results["raw"] = run_child("raw", directory, args, [])
    print(f"raw scan (warm): {results['raw']}  load={load()}", flush=True)
    results["reader"] = run_child("reader", directory, args, ["--marks", marks])
    print(f"reader (warm): {results['reader']}  load={load()}", flush=True)
    cold = not args.no_cold and drop_caches()
    if cold:
        results["raw_cold"] = run_child("raw", directory, args, [])
        drop_caches()
        results["reader_cold"] = run_child("reader", directory, args, [])
        print(f"cold: raw {results['raw_cold']}  reader {results['reader_cold']}", flush=True)
        warm(directory)
    if not args.skip_datasets:
        results["hf"] = run_child("hf", directory, args, [])
        print(f"datasets: {results['hf']}  load={load()}", flush=True)
    if not args.skip_head:
        results["head"] = run_child("head", directory, args, [])
        print(f"head streaming: {results['head']}  load={load()}", flush=True)

    print_table(args, manifest, size, results, hf_rows, head_rows, cold)
    return 0


def print_table(args, manifest, size, results, hf_rows, head_rows, cold) -> None:
    raw, reader = results["raw"], results["reader"]
    rows: list[tuple[str, str, str]] = []

    def add(name: str, value: str, goal: str = "") -> None:
        rows.append((name, value, goal))

    def rate(r: dict) -> str:
        return f"{r['tokens_per_s'] / 1e6:8.2f} M tok/s" if "tokens_per_s" in r else "error"

    def ratio(a: float | None, b: float | None) -> float | None:
        return None if not a or not b else a / b

    add(
        "dataset",
        f"{size / (1 << 30):.2f} GiB, {len(manifest.shards)} shards, "
        f"{manifest.total_rows:,} rows, {manifest.total_tokens:,} tokens",
    )
    add("batch size / cores / load avg", f"{args.batch_size} / {os.cpu_count()} / {load()}")
    add("raw mmap IPC scan (warm)", rate(raw))
    add("ftlaunch reader (warm, full epoch)", rate(reader))
    r = ratio(reader.get("tokens_per_s"), raw.get("tokens_per_s"))
    add(
        "  reader / raw",
        f"{r:.3f}" if r else "n/a",
        f">= {GOAL_RAW_RATIO}: {verdict(None if r is None else r >= GOAL_RAW_RATIO)}",
    )
    if cold:
        rc, rr = results["raw_cold"], results["reader_cold"]
        add("raw mmap IPC scan (cold)", rate(rc))
        add("ftlaunch reader (cold, full epoch)", rate(rr))
        r = ratio(rr.get("tokens_per_s"), rc.get("tokens_per_s"))
        add(
            "  reader / raw (cold)",
            f"{r:.3f}" if r else "n/a",
            f">= {GOAL_RAW_RATIO}: {verdict(None if r is None else r >= GOAL_RAW_RATIO)}",
        )
    if "hf" in results:
        hf = results["hf"]
        add(
            f"datasets {hf.get('datasets_version', '')} (shuffled, first {hf_rows:,} rows)",
            rate(hf),
        )
        mark = reader.get("marks", {}).get(str(hf_rows))
        mine = reader.get("tokens_per_s")
        label = "full epoch"
        if mark and "tokens_per_s" in hf:
            mine = mark[2] / mark[0]  # the reader's rate over its own first rows
            label = f"first {mark[1]:,} rows"
        r = ratio(mine, hf.get("tokens_per_s"))
        add(
            f"  reader / datasets (reader over {label})",
            f"{r:.2f}" if r else "n/a",
            f">= {GOAL_HF_RATIO}: {verdict(None if r is None else r >= GOAL_HF_RATIO)}",
        )
    ttfb = reader.get("ttfb_s")
    add(
        "time to first batch (warm)",
        f"{ttfb * 1000:.0f} ms" if ttfb is not None else "n/a",
        f"< {GOAL_TTFB_S:g} s: {verdict(None if ttfb is None else ttfb < GOAL_TTFB_S)}",
    )
    if cold and results["reader_cold"].get("ttfb_s") is not None:
        t = results["reader_cold"]["ttfb_s"]
        add(
            "time to first batch (cold)",
            f"{t * 1000:.0f} ms",
            f"< {GOAL_TTFB_S:g} s: {verdict(t < GOAL_TTFB_S)}",
        )
    if "peak_rss_mb" in reader:
        delta = reader["peak_rss_delta_mb"]
        add(
            "reader peak RSS over post-import RSS",
            f"{delta:.0f} MB",
            f"< {GOAL_RSS_MB:g} MB: {verdict(delta < GOAL_RSS_MB)}",
        )
        add(
            "reader process peak RSS (incl. torch+pyarrow)",
            f"{reader['peak_rss_mb']:.0f} MB (after imports {reader['rss_after_imports_mb']:.0f})",
            f"< {GOAL_RSS_MB:g} MB: {verdict(reader['peak_rss_mb'] < GOAL_RSS_MB)}",
        )
    if "head" in results:
        head = results["head"]
        add(f"head-only streaming (same node, first {head_rows:,} rows)", rate(head))
        mark = reader.get("marks", {}).get(str(head_rows))
        if mark and "tokens_per_s" in head:
            mine = mark[2] / mark[0]
            r = head["tokens_per_s"] / mine
            add("  head streaming / local reader (same rows)", f"{r:.3f}", "(no goal)")
            add(
                "  streamed",
                f"{head.get('head_streamed_blocks', 0)} blocks, "
                f"{head.get('head_streamed_bytes', 0) / 1e6:.0f} MB, nodes={head.get('nodes')}",
            )

    width = max(len(n) for n, _, _ in rows)
    vwidth = max(len(v) for _, v, _ in rows)
    print()
    print("ftlaunch data reader benchmark")
    print("-" * (width + vwidth + 30))
    for name, value, goal in rows:
        print(f"{name:<{width}}  {value:<{vwidth}}  {goal}")
    print("-" * (width + vwidth + 30))


if __name__ == "__main__":
    sys.exit(main())
