"""Evaluate on a split across all ranks and compute the same metrics on every rank.

Each rank scores its own padded share of the rows; predictions are all-gathered, so every rank
computes identical metrics and therefore takes identical early-stopping decisions.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

from trainer.data.split import ShardedSplit
from trainer.engines.base import Engine


@dataclass(frozen=True)
class EvalResult:
    loss: float
    accuracy: float
    macro_f1: float
    num_samples: int
    sample_ids: np.ndarray = field(repr=False)
    predictions: np.ndarray = field(repr=False)
    labels: np.ndarray = field(repr=False)

    def metrics(self, prefix: str) -> dict[str, float]:
        return {
            f"{prefix}_loss": self.loss,
            f"{prefix}_accuracy": self.accuracy,
            f"{prefix}_macro_f1": self.macro_f1,
        }

    def summary(self) -> dict[str, float]:
        return {
            "accuracy": self.accuracy,
            "macro_f1": self.macro_f1,
            "loss": self.loss,
            "num_samples": self.num_samples,
        }

    def metric(self, name: str) -> float:
        return {"loss": self.loss, "accuracy": self.accuracy, "macro_f1": self.macro_f1}[name]


def macro_f1(labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> float:
    """Unweighted mean of per-class F1 over the classes present in labels or predictions."""
    scores = []
    for cls in range(num_classes):
        tp = np.sum((predictions == cls) & (labels == cls))
        fp = np.sum((predictions == cls) & (labels != cls))
        fn = np.sum((predictions != cls) & (labels == cls))
        if tp + fp + fn == 0:
            continue
        scores.append(2 * tp / (2 * tp + fp + fn))
    return float(np.mean(scores)) if scores else 0.0


@torch.no_grad()
def evaluate(engine: Engine, split: ShardedSplit, batch_size: int, num_classes: int) -> EvalResult:
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
        macro_f1=macro_f1(labels, preds, num_classes),
        num_samples=len(table),
        sample_ids=table[:, 0].astype(np.int64),
        predictions=preds,
        labels=labels,
    )


def majority_baseline_accuracy(majority_label: int, eval_labels: np.ndarray) -> float:
    """Accuracy of always predicting the most frequent train label."""
    return float(np.mean(eval_labels == majority_label))
