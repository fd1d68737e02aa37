"""The sequence-classification recipe: a fresh head over the labels, cross-entropy on it,
accuracy and macro-F1 on the validation and test splits, and the best weights saved with the
label map and the test predictions. The run itself is trainer/loop/run.py."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import torch

from trainer.config.spec import RunSpec
from trainer.data.split import Batch, ShardedSplit
from trainer.engines.base import Engine
from trainer.eval.classification import EvalResult, evaluate, majority_baseline_accuracy
from trainer.export.save import save_classifier
from trainer.formats.rundir import MODEL_DIR, PREDICTIONS_FILE
from trainer.loop.context import Run
from trainer.loop.train import TrainOutcome
from trainer.model.build import LoadPlan, build_classifier
from trainer.protocols import ArtifactSink, ShardStore


class ClassificationRecipe:
    def __init__(self, spec: RunSpec) -> None:
        self.spec = spec
        self.eval_batch = spec.job.training.effective_eval_batch_size()

    def open_split(self, store: ShardStore) -> ShardedSplit:
        return ShardedSplit(store)

    def build_model(self, load: LoadPlan) -> torch.nn.Module:
        """The pretrained encoder with a new head; every rank seeds alike, so heads are equal."""
        job = self.spec.job
        return build_classifier(
            self.spec.model_dir,
            self.spec.label_names,
            job.peft,
            job.training.gradient_checkpointing,
            load,
        )

    def run_facts(self, train: ShardedSplit) -> dict[str, Any]:
        return {}

    def loss(self, engine: Engine, batch: Batch) -> torch.Tensor:
        inputs = batch.model_inputs(engine.device)
        return engine(**inputs, labels=batch.labels.to(engine.device)).loss

    def evaluate(self, engine: Engine, split: ShardedSplit) -> EvalResult:
        metrics = self.spec.job.training.metrics
        return evaluate(engine, split, self.eval_batch, self.spec.label_names, metrics)

    def after_evaluation(
        self, engine: Engine, step: int, run: Run, validation: ShardedSplit
    ) -> None:
        return None

    def test_facts(
        self, train: ShardedSplit, test: EvalResult, outcome: TrainOutcome
    ) -> dict[str, Any]:
        baseline = majority_baseline_accuracy(train.majority_label(), test.labels)
        return {"majority_baseline_accuracy": baseline}

    def save(self, state: dict[str, torch.Tensor], test: EvalResult, sink: ArtifactSink) -> None:
        """model/ (merged weights, tokenizer, label map) and the test predictions, to the head."""
        labels = self.spec.label_names
        with tempfile.TemporaryDirectory(prefix="ftlaunch-export-") as tmp:
            sink.put_dir(save_classifier(state, self.spec, Path(tmp) / MODEL_DIR), MODEL_DIR)
            predictions = Path(tmp) / PREDICTIONS_FILE
            with predictions.open("w") as fh:
                rows = zip(test.sample_ids, test.predictions, test.labels, strict=True)
                for sample_id, pred, label in rows:
                    row = {
                        "sample_id": int(sample_id),
                        "prediction": labels[pred],
                        "label": labels[label],
                    }
                    fh.write(json.dumps(row) + "\n")
            sink.put_file(predictions, PREDICTIONS_FILE)
