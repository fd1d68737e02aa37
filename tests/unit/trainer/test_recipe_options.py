"""Recipe options: cosine and linear schedules after warmup, the optimizers `optim.name` names,
peft's all-linear targets on a real tiny BERT, and the classification metrics checked against
scikit-learn as the independent reference."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from trainer.config import JobConfig
from trainer.config.errors import UnsupportedConfigError
from trainer.engines.base import build_optimizer, lr_lambda
from trainer.eval.classification import EvalResult, macro_f1, micro_f1, per_class_scores


def job(**optim: object) -> JobConfig:
    return JobConfig.model_validate(
        {
            "model": {"path": "m"},
            "data": {"train": "a", "validation": "b", "test": "c"},
            "optim": optim,
        }
    )


def test_schedules_after_warmup() -> None:
    cosine, linear = lr_lambda(110, 10, "cosine"), lr_lambda(110, 10, "linear")
    assert [cosine(s) for s in (0, 4, 9)] == [0.1, 0.5, 1.0]  # linear warmup for both
    assert cosine(10) == 1.0 and cosine(110) == 0.0
    assert cosine(60) == pytest.approx(0.5)  # halfway through the decay
    assert cosine(35) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.25)))
    assert cosine(35) > linear(35)  # cosine stays high longer, then falls faster
    assert cosine(85) < linear(85)
    assert lr_lambda(110, 10, "constant")(100) == 1.0


def test_optimizers_by_name() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4))
    sgd, _ = build_optimizer(model, job(name="sgd", momentum=0.9, lr=0.1), 10)
    assert isinstance(sgd, torch.optim.SGD)
    assert sgd.param_groups[0]["momentum"] == 0.9
    assert {g["weight_decay"] for g in sgd.param_groups} == {0.01, 0.0}  # no decay on norms
    adamw, _ = build_optimizer(model, job(), 10)
    assert isinstance(adamw, torch.optim.AdamW)
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        with pytest.raises(
            UnsupportedConfigError, match=r"optim\.name: adamw_8bit needs bitsandbytes"
        ):
            build_optimizer(model, job(name="adamw_8bit"), 10)


def test_classification_metrics_match_scikit_learn() -> None:
    from sklearn.metrics import f1_score, precision_recall_fscore_support

    rng = np.random.default_rng(0)
    labels, preds = rng.integers(0, 3, 200), rng.integers(0, 3, 200)
    preds[:80] = labels[:80]  # better than chance
    assert macro_f1(labels, preds, 3) == pytest.approx(f1_score(labels, preds, average="macro"))
    assert micro_f1(labels, preds, 3) == pytest.approx(f1_score(labels, preds, average="micro"))
    precision, recall, f1, support = precision_recall_fscore_support(labels, preds)
    scores = per_class_scores(labels, preds, ["a", "b", "c"])
    for i, name in enumerate("abc"):
        assert scores[name]["precision"] == pytest.approx(precision[i])
        assert scores[name]["recall"] == pytest.approx(recall[i])
        assert scores[name]["f1"] == pytest.approx(f1[i])
        assert scores[name]["support"] == support[i]
    result = EvalResult(
        loss=0.5,
        accuracy=0.6,
        macro_f1=0.55,
        num_samples=200,
        sample_ids=np.arange(200),
        predictions=preds,
        labels=labels,
        micro_f1=0.6,
        per_class=scores,
        chosen=("micro_f1", "per_class"),
    )
    assert result.metrics("val") == {"val_loss": 0.5, "val_micro_f1": 0.6}
    assert set(result.summary()) == {"micro_f1", "loss", "num_samples", "per_class"}
    assert result.metric("accuracy") == 0.6  # early stopping may use any metric


def test_all_linear_targets_every_linear_layer_but_the_head(tmp_path: Path) -> None:
    from tests.fixtures import make_tiny_bert
    from trainer.config.peft import LoraPeft
    from trainer.model.build import build_classifier

    model_dir = make_tiny_bert(tmp_path / "bert")
    model = build_classifier(model_dir, ["a", "b"], LoraPeft(target_modules="all-linear"))
    adapted = {
        name.rsplit(".", 1)[0] for name, _ in model.named_modules() if name.endswith("lora_A")
    }
    short = {name.split("encoder.layer.0.")[-1] for name in adapted if ".layer.0." in name}
    assert short == {
        "attention.self.query",
        "attention.self.key",
        "attention.self.value",
        "attention.output.dense",
        "intermediate.dense",
        "output.dense",
    }
    assert not any("classifier" in name for name in adapted)
    with pytest.raises(ValueError, match="target_modules"):
        JobConfig.model_validate(
            {
                "model": {"path": "m"},
                "data": {"train": "a", "validation": "b", "test": "c"},
                "peft": {"method": "ia3", "target_modules": "all-linear"},
            }
        )
