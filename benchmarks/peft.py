"""PEFT methods side by side on the demo model (MiniLM-L6): training tokens/s and peak RSS for
none (full fine-tuning), LoRA and prompt tuning (issue 6's benchmark, its PEFT half).

Each method runs in a fresh process, so peak RSS (ru_maxrss) is that method's alone: the real
worker path (trainer.model.build.build_classifier + trainer.engines.build_engine, DeepSpeed with the
job's ZeRO stage over a one-rank gloo group) on the generated demo reviews, `--steps` optimizer
steps after `--warmup` untimed ones. tokens/s counts real (non-padding) tokens, as the training
loop's metrics do; prompt tuning's virtual tokens are not counted.

Run:
    python benchmarks/peft.py [--steps 20] [--warmup 3] [--zero-stage 2] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
METHODS = {
    "none": {"method": "none"},
    "lora": {"method": "lora", "r": 8, "target_modules": ["query", "value"]},
    "prompt_tuning": {"method": "prompt_tuning", "num_virtual_tokens": 20},
}

ONE_METHOD = """
import json, os, resource, sys, time
import torch, torch.distributed as dist
from transformers import AutoTokenizer
from launcher.models import resolve_model_path
from trainer.config import JobConfig
from trainer.engines import build_engine
from trainer.model.build import build_classifier, count_parameters

args = json.loads(sys.argv[1])
torch.set_num_threads(args["threads"])
os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1",
                  MASTER_PORT=str(args["port"]))
dist.init_process_group("gloo", rank=0, world_size=1)
model_dir = resolve_model_path("minilm-l6")
rows = [json.loads(line) for line in open(args["train"])]
labels = sorted({r["label"] for r in rows})
job = JobConfig.model_validate({
    "model": {"path": str(model_dir)},
    "data": {"train": "x", "validation": "y", "test": "z", "max_length": 64},
    "peft": args["peft"],
    "training": {"micro_batch_size": 16},
    "engine": {"zero_stage": args["zero_stage"]},
})
torch.manual_seed(0)
model = build_classifier(model_dir, labels, job.peft)
trainable, total = count_parameters(model)
steps = args["steps"] + args["warmup"]
engine = build_engine(model, job, 1, steps)
tokenizer = AutoTokenizer.from_pretrained(model_dir)
tokens, started = 0, None
for step in range(steps):
    if step == args["warmup"]:
        tokens, started = 0, time.perf_counter()
    batch = [rows[(step * 16 + i) % len(rows)] for i in range(16)]
    enc = tokenizer([r["text"] for r in batch], truncation=True, max_length=64, padding=True,
                    return_tensors="pt")
    target = torch.tensor([labels.index(r["label"]) for r in batch])
    loss = engine(**enc, labels=target).loss
    engine.backward(loss)
    engine.step()
    tokens += int(enc["attention_mask"].sum())
elapsed = time.perf_counter() - started
print(json.dumps({"tokens_per_s": tokens / elapsed, "peak_rss_mb":
    resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "trainable": trainable,
    "total": total, "final_loss": loss.item()}))
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_method(name: str, train: Path, options: argparse.Namespace, port: int) -> dict:
    args = {
        "peft": METHODS[name],
        "train": str(train),
        "steps": options.steps,
        "warmup": options.warmup,
        "zero_stage": options.zero_stage,
        "threads": options.threads,
        "port": port,
    }
    env = dict(os.environ, PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    done = subprocess.run(
        [sys.executable, "-c", ONE_METHOD, json.dumps(args)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        raise SystemExit(f"{name} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--zero-stage", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    options = parser.parse_args()
    sys.path.insert(0, str(REPO))
    from launcher.data.demo import write_demo_dataset

    with tempfile.TemporaryDirectory(prefix="ftl-bench-peft-") as tmp:
        train = write_demo_dataset(Path(tmp) / "data", seed=0)["train"]
        results = {name: run_method(name, train, options, free_port()) for name in METHODS}
    print(
        f"MiniLM-L6, micro batch 16, max_length 64, ZeRO-{options.zero_stage}, 1 rank, "
        f"{options.threads} thread(s), {options.steps} timed steps"
    )
    print(f"{'method':<15}{'tokens/s':>10}{'peak RSS MB':>13}{'trainable':>13}{'fraction':>10}")
    for name, r in results.items():
        fraction = r["trainable"] / r["total"]
        print(
            f"{name:<15}{r['tokens_per_s']:>10.0f}{r['peak_rss_mb']:>13.0f}"
            f"{r['trainable']:>13,}{fraction:>10.4f}"
        )
    print(json.dumps(results))


if __name__ == "__main__":
    main()
