"""Evaluate on a split across all ranks and compute the same metrics on every rank.

Each rank scores its own padded share of the rows; predictions are all-gathered, so every rank
computes identical metrics and therefore takes identical early-stopping decisions.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

from trainer.data.split import ShardedSplit
from trainer.engines.base import Engine

SCALAR_METRICS = ("accuracy", "macro_f1", "micro_f1")


@dataclass(frozen=True)
class EvalResult:
    loss: float
    accuracy: float
    macro_f1: float
    num_samples: int
    sample_ids: np.ndarray = field(repr=False)
    predictions: np.ndarray = field(repr=False)
    labels: np.ndarray = field(repr=False)
    micro_f1: float = 0.0
    per_class: dict[str, dict[str, float]] = field(default_factory=dict, repr=False)
    chosen: tuple[str, ...] = ("accuracy", "macro_f1")  # training.metrics

    def metrics(self, prefix: str) -> dict[str, float]:
        """Loss and the chosen scalar metrics, for metrics.jsonl (`val_accuracy`, ...)."""
        chosen = {f"{prefix}_{name}": self.metric(name) for name in self._scalars()}
        return {f"{prefix}_loss": self.loss} | chosen

    def summary(self) -> dict[str, Any]:
        """The chosen metrics for summary.json; per_class is {label: precision, recall, ...}."""
        scalars = {name: self.metric(name) for name in self._scalars()}
        result: dict[str, Any] = scalars | {"loss": self.loss, "num_samples": self.num_samples}
        if "per_class" in self.chosen:
            result["per_class"] = self.per_class
        return result

    def metric(self, name: str) -> float:
        values = {"loss": self.loss, "accuracy": self.accuracy, "macro_f1": self.macro_f1}
        return (values | {"micro_f1": self.micro_f1})[name]

    def _scalars(self) -> list[str]:
        return [name for name in SCALAR_METRICS if name in self.chosen]


def class_counts(labels: np.ndarray, predictions: np.ndarray, cls: int) -> tuple[int, int, int]:
    """(true positives, false positives, false negatives) of class `cls`."""
    tp = int(np.sum((predictions == cls) & (labels == cls)))
    fp = int(np.sum((predictions == cls) & (labels != cls)))
    fn = int(np.sum((predictions != cls) & (labels == cls)))
    return tp, fp, fn


def macro_f1(labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> float:
    """Unweighted mean of per-class F1 over the classes present in labels or predictions."""
    scores = []
    for cls in range(num_classes):
        tp, fp, fn = class_counts(labels, predictions, cls)
        if tp + fp + fn == 0:
            continue
        scores.append(2 * tp / (2 * tp + fp + fn))
    return float(np.mean(scores)) if scores else 0.0


def micro_f1(labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> float:
    """F1 of the pooled counts over all classes (equal to accuracy for single-label data, and
    reported under its own name because peers and papers do)."""
    counts = np.array([class_counts(labels, predictions, c) for c in range(num_classes)])
    tp, fp, fn = counts.sum(axis=0) if len(counts) else (0, 0, 0)
    return float(2 * tp / (2 * tp + fp + fn)) if tp + fp + fn else 0.0


def per_class_scores(
    labels: np.ndarray, predictions: np.ndarray, names: list[str]
) -> dict[str, dict[str, float]]:
    """{label: precision, recall, f1, support}; a score with an empty denominator is 0."""
    scores = {}
    for cls, name in enumerate(names):
        tp, fp, fn = class_counts(labels, predictions, cls)
        precision = tp / (tp + fp) if tp + fp else 0.0
        recall = tp / (tp + fn) if tp + fn else 0.0
        f1 = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0
        scores[name] = {"precision": precision, "recall": recall, "f1": f1, "support": tp + fn}
    return scores


@torch.no_grad()
def evaluate(
    engine: Engine, split: ShardedSplit, batch_size: int, names: list[str], chosen: Sequence[str]
) -> EvalResult:
    """Score every row of `split` exactly once across ranks (all ranks must call this)."""
    world, rank = dist.get_world_size(), dist.get_rank()
    was_training = engine.module.training
    engine.module.eval()
    parts: list[torch.Tensor] = []
    for batch in split.iter_batches(
        split.epoch_batches(0, 0, world, rank, batch_size, train=False)
    ):
        logits = engine(**batch.model_inputs(engine.device)).logits.float().cpu()
        loss = F.cross_entropy(logits, batch.labels, reduction="none")
        parts.append(
            torch.stack(
                [
                    batch.sample_ids.double(),
                    batch.labels.double(),
                    logits.argmax(-1).double(),
                    loss.double(),
                ],
                dim=1,
            )
        )
    engine.module.train(was_training)
    local = torch.cat(parts) if parts else torch.zeros((0, 4), dtype=torch.float64)
    gathered = [torch.empty_like(local) for _ in range(world)]
    dist.all_gather(gathered, local)
    table = torch.cat(gathered).numpy()
    table = table[table[:, 0] >= 0]  # drop the padding rows
    table = table[np.argsort(table[:, 0], kind="stable")]
    labels, preds = table[:, 1].astype(np.int64), table[:, 2].astype(np.int64)
    return EvalResult(
        loss=float(table[:, 3].mean()),
        accuracy=float(np.mean(labels == preds)),
        macro_f1=macro_f1(labels, preds, len(names)),
        num_samples=len(table),
        sample_ids=table[:, 0].astype(np.int64),
        predictions=preds,
        labels=labels,
        micro_f1=micro_f1(labels, preds, len(names)),
        per_class=per_class_scores(labels, preds, names),
        chosen=tuple(chosen),
    )


def majority_baseline_accuracy(majority_label: int, eval_labels: np.ndarray) -> float:
    """Accuracy of always predicting the most frequent train label."""
    return float(np.mean(eval_labels == majority_label))
