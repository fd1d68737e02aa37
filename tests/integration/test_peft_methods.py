"""The PEFT menu end to end: real CLI, 2 Ray workers on the session head, real DeepSpeed ZeRO.

Each method runs once, the ZeRO stages rotated among them (CI time is tight): the loss goes down,
the method's own parameters moved from their initial values, the trainable fraction is recorded,
the checkpoint holds only what trained, and `ftlaunch export` (merged, or the adapter for prompt
tuning and with --adapter-only) reloads with plain transformers / peft and predicts exactly what
the trained model predicted on the test split.

The base is the tiny BERT after a few seconds of full fine-tuning on the same keyword task (then
saved without its head): PEFT adapts a pretrained model, and on a random 2-layer encoder prompt
tuning and IA3 need hundreds of steps before the loss moves (measured), which CI cannot afford.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.fixtures import ftlaunch
from tests.integration.conftest import cluster_env
from tests.integration.test_train_ray import read_metrics, reload_and_predict, write_job

pytestmark = [pytest.mark.ray, pytest.mark.dist, pytest.mark.slow]

STEPS = 24  # 3 epochs of 256 rows at 2 x 16 per step; the only validation is the last step
CASES = {
    # method-specific options are exercised here, not just the defaults
    "lora-dora-rslora-zero0": [
        "engine.zero_stage=0",
        "peft.method=lora",
        "peft.use_dora=true",
        "peft.use_rslora=true",
        "peft.target_modules=[query, value]",
    ],
    "adapter-zero1": [
        "engine.zero_stage=1",
        "peft.method=adapter",
        "peft.target_modules=[query, value, output.dense]",
    ],
    "prompt-tuning-zero2": [
        "engine.zero_stage=2",
        "peft.method=prompt_tuning",
        # One virtual token: peft tokenizes init_text with special tokens, so it starts as the
        # [CLS] embedding. Longer text-initialised prompts ([CLS] great or awful ...) repeat [CLS]
        # and did not learn within CI's step budget on this 2-layer model (random init did).
        "peft.num_virtual_tokens=1",
        "peft.init_text=great",
    ],
    "ia3-zero3": [
        "engine.zero_stage=3",
        "peft.method=ia3",
        "peft.target_modules=[key, value, output.dense]",
        "peft.feedforward_modules=[output.dense]",
    ],
}


def make_warm_tiny_bert(out_dir: Path, train_file: Path, steps: int = 40) -> Path:
    """The tiny BERT, fully fine-tuned for `steps` on the keyword task, saved as a base model."""
    import shutil

    import torch
    from transformers import AutoTokenizer, BertForSequenceClassification

    from tests.fixtures import TOKENIZER_FILES, make_tiny_bert

    random_dir = make_tiny_bert(out_dir.with_name(out_dir.name + "-random"))
    torch.manual_seed(0)
    model = BertForSequenceClassification.from_pretrained(random_dir, num_labels=2)
    tokenizer = AutoTokenizer.from_pretrained(random_dir)
    rows = [json.loads(line) for line in train_file.read_text().splitlines()]
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.01)
    for step in range(steps):
        batch = [rows[(step * 32 + i) % len(rows)] for i in range(32)]
        enc = tokenizer([r["text"] for r in batch], padding=True, return_tensors="pt")
        labels = torch.tensor([int(r["label"] == "pos") for r in batch])
        model(**enc, labels=labels).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.bert.save_pretrained(out_dir)  # the encoder only: every run starts a fresh head
    for name in TOKENIZER_FILES:
        shutil.copyfile(random_dir / name, out_dir / name)
    return out_dir


@pytest.fixture(scope="module")
def warm_bert(tmp_path_factory: pytest.TempPathFactory, keyword_data: dict[str, Path]) -> Path:
    return make_warm_tiny_bert(tmp_path_factory.mktemp("models") / "warm", keyword_data["train"])


def moved_from_init(adapter_file: Path, method: str, base: Path) -> bool:
    """Whether the method's own tensors trained, not just the classification head: each starts
    at a known value (LoRA's B and LoHa's w2_b at zero, IA3's scales at one, the virtual tokens
    at copies of the init text's embeddings)."""
    from safetensors.torch import load_file

    tensors = load_file(str(adapter_file))
    if method == "prompt_tuning":
        (prompt,) = [t for n, t in tensors.items() if "prompt_embeddings" in n]
        vocab = load_file(str(base / "model.safetensors"))["embeddings.word_embeddings.weight"]
        return not all((vocab == row).all(-1).any() for row in prompt)
    start = {"lora": ("lora_B", 0.0), "adapter": ("hada_w2_b", 0.0), "ia3": ("ia3_l", 1.0)}
    marker, initial = start[method]
    own = [t for n, t in tensors.items() if marker in n]
    return bool(own) and all((t - initial).abs().max() > 1e-6 for t in own)


def predict_with_adapter(base: Path, adapter: Path, test_file: Path) -> list[str]:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    labels = json.loads((adapter / "label_map.json").read_text())["labels"]
    model = AutoModelForSequenceClassification.from_pretrained(base, num_labels=len(labels))
    model = PeftModel.from_pretrained(model, adapter).eval()
    tokenizer = AutoTokenizer.from_pretrained(adapter)
    texts = [json.loads(line)["text"] for line in test_file.read_text().splitlines()]
    with torch.no_grad():
        batch = tokenizer(texts, truncation=True, max_length=32, padding=True, return_tensors="pt")
        return [labels[i] for i in model(**batch).logits.argmax(-1).tolist()]


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


@pytest.mark.timeout(420)
@pytest.mark.parametrize("name", list(CASES))
def test_peft_method_trains_checkpoints_small_and_exports(
    tmp_path: Path,
    warm_bert: Path,
    keyword_data: dict[str, Path],
    ray_head: dict[str, str],
    name: str,
) -> None:
    job = write_job(tmp_path, warm_bert, keyword_data)
    sets = [
        *CASES[name],
        "training.epochs=3",
        "training.eval_every=1000",
        f"training.checkpoint_every={STEPS}",
        "optim.lr=0.01",
        "optim.warmup_ratio=0",
    ]
    args = [a for s in sets for a in ("--set", s)]
    result = ftlaunch(
        "run", str(job), "--address", ray_head["address"], *args, env=cluster_env(ray_head)
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = tmp_path / "out"

    summary = json.loads((out / "summary.json").read_text())
    method = CASES[name][1].split("=")[1]
    assert summary["peft_method"] == method and summary["steps"] == STEPS
    assert 0 < summary["trainable_params"] < summary["total_params"] / 10
    assert summary["trainable_fraction"] == pytest.approx(
        summary["trainable_params"] / summary["total_params"]
    )
    assert summary["precision"] == "fp32" and summary["gradient_checkpointing"] is False
    assert "trainable parameters: " in result.stdout
    train = [r["loss"] for r in read_metrics(out) if r["event"] == "train"]
    assert train[-1] < train[0] * 0.9, train

    # Only what trained is checkpointed: a fraction of the fp32 model (weights alone, ~4 MB).
    checkpoint = out / "checkpoints" / f"step-{STEPS}"
    model_bytes = 4 * summary["total_params"]
    assert dir_bytes(checkpoint) < model_bytes / 4, (dir_bytes(checkpoint), model_bytes)

    expected = [
        json.loads(line)["prediction"]
        for line in (out / "predictions_test.jsonl").read_text().splitlines()
    ]
    exported = tmp_path / "exported"
    done = ftlaunch("export", str(out), "--out", str(exported), timeout=200)
    assert done.returncode == 0, done.stderr[-3000:]
    if method == "prompt_tuning":  # cannot merge: the run's model and the export are adapters
        assert "as a peft adapter" in done.stdout
        assert (out / "model" / "ADAPTER_ONLY.md").is_file()
        assert predict_with_adapter(warm_bert, exported, keyword_data["test"]) == expected
        assert moved_from_init(exported / "adapter_model.safetensors", method, warm_bert)
        assert predict_with_adapter(warm_bert, out / "model", keyword_data["test"]) == expected
    else:
        assert "reload verified" in done.stdout
        assert reload_and_predict(exported, keyword_data["test"]) == expected
        assert reload_and_predict(out / "model", keyword_data["test"]) == expected
        adapter = tmp_path / "adapter"
        done = ftlaunch("export", str(out), "--out", str(adapter), "--adapter-only", timeout=200)
        assert done.returncode == 0 and "as a peft adapter" in done.stdout, done.stderr[-3000:]
        assert (adapter / "adapter_config.json").is_file()
        assert dir_bytes(adapter / "adapter_model.safetensors") < model_bytes / 10
        assert predict_with_adapter(warm_bert, adapter, keyword_data["test"]) == expected
        assert moved_from_init(adapter / "adapter_model.safetensors", method, warm_bert)
