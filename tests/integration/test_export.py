"""`ftlaunch export`: consolidate ZeRO-2, ZeRO-3 and LoRA (merged) checkpoints into a plain model
whose weights equal the model the run saved, reloadable with transformers."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fixtures import assert_user_error, ftlaunch
from tests.integration.test_train_ray import reload_and_predict

pytestmark = [pytest.mark.ray, pytest.mark.dist]


@pytest.mark.timeout(400)
@pytest.mark.parametrize(
    "extra",
    [
        ["engine.zero_stage=2"],
        ["engine.zero_stage=3"],
        [
            "engine.zero_stage=3",
            "peft.method=lora",
            "optim.lr=0.01",
            "peft.target_modules=[query, value, dense]",
        ],
    ],
    ids=["zero2", "zero3", "lora-zero3"],
)
def test_export_equals_the_trained_model(
    tmp_path: Path, tiny_bert: Path, keyword_data: dict, extra: list[str]
) -> None:
    import torch
    from safetensors.torch import load_file

    job = tmp_path / "job.yaml"
    job.write_text(f"model: {{path: {tiny_bert}}}\ndata: {{train: x, validation: y, test: z}}\n")
    out = tmp_path / "out"
    # Validation only at the last step, so the saved best model is the last checkpoint's weights.
    sets = {
        "data.train": keyword_data["train"],
        "data.validation": keyword_data["validation"],
        "data.test": keyword_data["test"],
        "data.max_length": 32,
        "output.dir": out,
        "training.epochs": 6,
        "training.eval_every": 1000,
        "training.checkpoint_every": 48,
        "optim.lr": 0.002,
    }
    args = [a for k, v in sets.items() for a in ("--set", f"{k}={v}")] + [
        a for o in extra for a in ("--set", o)
    ]
    trained = ftlaunch("run", str(job), *args)
    assert trained.returncode == 0, trained.stderr[-3000:]

    exported = ftlaunch("export", str(out), "--out", str(tmp_path / "exported"), timeout=200)
    assert exported.returncode == 0, exported.stderr[-3000:]
    assert "exported step-48" in exported.stdout and "reload verified" in exported.stdout
    ours, saved = (
        load_file(str(tmp_path / "exported" / "model.safetensors")),
        load_file(str(out / "model" / "model.safetensors")),
    )
    assert ours.keys() == saved.keys()
    for name, tensor in saved.items():
        torch.testing.assert_close(ours[name], tensor, rtol=0, atol=1e-5, msg=name)
    assert reload_and_predict(tmp_path / "exported", keyword_data["test"]) == reload_and_predict(
        out / "model", keyword_data["test"]
    )
    if "peft.method=lora" in extra:
        assert not any("lora" in name for name in ours)

    missing = ftlaunch(
        "export", str(out), "--checkpoint", "step-7", "--out", str(tmp_path / "x"), timeout=60
    )
    assert_user_error(missing, "--checkpoint: 'step-7' is not a complete checkpoint")
    assert_user_error(
        ftlaunch("export", str(tmp_path), "--out", str(tmp_path / "x"), timeout=60),
        "RUN_DIR: no complete checkpoint",
    )
