"""The baseline of the overhead benchmark: a hand-written DeepSpeed fine-tuning script.

This is what a user would write without ftlaunch: load the model with transformers, read the
tokenized Arrow shards with pyarrow, shard them across ranks by hand, and step a DeepSpeed engine.
It trains on exactly what `ftlaunch run` trains on (same model, shards, sample order, micro-batch,
ZeRO stage, optimizer and schedule; the DeepSpeed config comes from the same pure function
`trainer.engine.deepspeed_config`), so any difference in time per step is launcher overhead.

Rank 0 writes a JSON file with the launcher's start time (`--launch-time`, the parent's
time.time() when it spawned torchrun), this script's start time, the time DeepSpeed was ready,
and time.time() after every optimizer step.

Run (normally started by benchmarks/overhead.py):
    torchrun --standalone --nproc-per-node 2 benchmarks/bare_deepspeed.py \
        --job JOB.yaml --model-dir MODEL --train-dir SHARDS --steps 60 --out timings.json
"""

from __future__ import annotations

import time

SCRIPT_START = time.time()  # before the heavy imports: they are part of the startup cost

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import deepspeed  # noqa: E402
import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
import yaml  # noqa: E402
from transformers import AutoModelForSequenceClassification  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from trainer.config.schema import JobConfig  # noqa: E402
from trainer.engines.base import deepspeed_config  # noqa: E402

NO_DECAY = ("bias", "LayerNorm.weight", "layer_norm.weight", "norm.weight")


def load_shards(directory: Path) -> tuple[dict, np.ndarray, np.ndarray, np.ndarray]:
    """Memory-map every shard the manifest lists; returns (manifest, offsets, token ids, labels)."""
    manifest = json.loads((directory / "manifest.json").read_text())
    tables = [
        pa.ipc.open_file(pa.memory_map(str(directory / shard["file"]), "r")).read_all()
        for shard in manifest["shards"]
    ]
    table = pa.concat_tables(tables).combine_chunks()
    ids = table.column("input_ids").combine_chunks()
    return (
        manifest,
        ids.offsets.to_numpy(),
        ids.values.to_numpy(),
        table.column("label").to_numpy().astype(np.int64),
    )


def make_batch(rows, offsets, values, labels, pad_id):
    """Pad one micro-batch to its longest sequence."""
    starts, ends = offsets[rows], offsets[rows + 1]
    width = int((ends - starts).max())
    input_ids = np.full((len(rows), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(rows), width), dtype=np.int64)
    for i, (start, end) in enumerate(zip(starts, ends, strict=True)):
        input_ids[i, : end - start] = values[start:end]
        mask[i, : end - start] = 1
    return (
        torch.from_numpy(input_ids),
        torch.from_numpy(mask),
        torch.from_numpy(labels[rows]),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--job", type=Path, required=True, help="job YAML (for its settings)")
    parser.add_argument("--model-dir", type=Path, required=True)
    parser.add_argument("--train-dir", type=Path, required=True, help="prepared shard directory")
    parser.add_argument("--steps", type=int, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--launch-time", type=float, default=SCRIPT_START)
    args = parser.parse_args()

    job = JobConfig.model_validate(yaml.safe_load(args.job.read_text()))
    t, o = job.training, job.optim
    deepspeed.init_distributed(dist_backend="gloo")
    world, rank = dist.get_world_size(), dist.get_rank()
    torch.set_num_threads(max(1, int(job.cluster.cpus_per_worker)))
    torch.manual_seed(t.seed)

    manifest, offsets, values, labels = load_shards(args.train_dir)
    model = AutoModelForSequenceClassification.from_pretrained(
        args.model_dir, num_labels=len(manifest["label_names"]), dtype=torch.float32
    )
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    groups = [
        {
            "params": [p for n, p in params if not any(m in n for m in NO_DECAY)],
            "weight_decay": o.weight_decay,
        },
        {"params": [p for n, p in params if any(m in n for m in NO_DECAY)], "weight_decay": 0.0},
    ]
    optimizer = torch.optim.AdamW(groups, lr=o.lr, betas=(o.beta1, o.beta2), eps=o.eps)
    warmup = round(o.warmup_ratio * args.steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda s: (
            (s + 1) / warmup if s < warmup else max(args.steps - s, 0) / (args.steps - warmup)
        ),
    )
    engine, _, _, _ = deepspeed.initialize(
        model=model,
        optimizer=optimizer,
        lr_scheduler=scheduler,
        config=deepspeed_config(job, world),
    )
    ready = time.time()

    micro, unit = t.micro_batch_size, t.micro_batch_size * world
    pad_id = manifest["pad_token_id"]
    step_times: list[float] = []
    epoch = 0
    while len(step_times) < args.steps:
        order = np.random.default_rng([t.seed, epoch]).permutation(len(labels))
        order = order[: len(order) - len(order) % (unit * t.grad_accum)]
        for micro_step, start in enumerate(range(0, len(order), unit), start=1):
            rows = order[start + rank * micro : start + (rank + 1) * micro]
            input_ids, mask, y = make_batch(rows, offsets, values, labels, pad_id)
            loss = engine(input_ids=input_ids, attention_mask=mask, labels=y).loss
            engine.backward(loss)
            engine.step()
            loss.item()
            if micro_step % t.grad_accum == 0:
                step_times.append(time.time())
                if len(step_times) == args.steps:
                    break
        epoch += 1

    if rank == 0:
        record = {
            "launch_time": args.launch_time,
            "script_start": SCRIPT_START,
            "engine_ready": ready,
            "step_times": step_times,
            "world_size": world,
            "zero_stage": job.engine.zero_stage,
        }
        args.out.write_text(json.dumps(record) + "\n")
    dist.barrier()
    engine.destroy()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
