"""The PEFT menu end to end: real CLI, 2 Ray workers on the session head, real DeepSpeed ZeRO.

Each method runs once, the ZeRO stages rotated among them (CI time is tight): the loss goes down,
the trainable fraction is recorded, the checkpoint holds only what trained, and `ftlaunch export`
(merged, or the adapter for prompt tuning and with --adapter-only) reloads with plain
transformers / peft and predicts exactly what the trained model predicted on the test split.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.fixtures import ftlaunch
from tests.integration.conftest import cluster_env
from tests.integration.test_train_ray import read_metrics, reload_and_predict, write_job

pytestmark = [pytest.mark.ray, pytest.mark.dist, pytest.mark.slow]

STEPS = 48  # 6 epochs of 256 rows at 2 x 16 per step; the only validation is the last step
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
        "peft.num_virtual_tokens=4",
        "peft.init_text='great or awful'",
    ],
    "ia3-zero3": [
        "engine.zero_stage=3",
        "peft.method=ia3",
        "peft.target_modules=[key, value, output.dense]",
        "peft.feedforward_modules=[output.dense]",
    ],
}


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


@pytest.mark.timeout(300)
@pytest.mark.parametrize("name", list(CASES))
def test_peft_method_trains_checkpoints_small_and_exports(
    tmp_path: Path,
    tiny_bert: Path,
    keyword_data: dict[str, Path],
    ray_head: dict[str, str],
    name: str,
) -> None:
    job = write_job(tmp_path, tiny_bert, keyword_data)
    sets = [
        *CASES[name],
        "training.epochs=6",
        "training.eval_every=1000",
        f"training.checkpoint_every={STEPS}",
        "optim.lr=0.05",
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
        assert predict_with_adapter(tiny_bert, exported, keyword_data["test"]) == expected
        assert predict_with_adapter(tiny_bert, out / "model", keyword_data["test"]) == expected
    else:
        assert "reload verified" in done.stdout
        assert reload_and_predict(exported, keyword_data["test"]) == expected
        assert reload_and_predict(out / "model", keyword_data["test"]) == expected
        adapter = tmp_path / "adapter"
        done = ftlaunch("export", str(out), "--out", str(adapter), "--adapter-only", timeout=200)
        assert done.returncode == 0 and "as a peft adapter" in done.stdout, done.stderr[-3000:]
        assert (adapter / "adapter_config.json").is_file()
        assert dir_bytes(adapter / "adapter_model.safetensors") < model_bytes / 10
        assert predict_with_adapter(tiny_bert, adapter, keyword_data["test"]) == expected
