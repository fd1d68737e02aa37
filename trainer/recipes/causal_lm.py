"""The causal-LM recipe: next-token loss on the scored tokens (masks and packing are stored in the
shards), validation loss and perplexity, greedy generation samples after each validation, and the
best weights saved as a decoder with its tokenizer. The run itself is trainer/loop/run.py."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import torch

from trainer.config.spec import RunSpec
from trainer.data.causal import CausalBatch, CausalSplit
from trainer.engines.base import Engine
from trainer.eval.causal import CausalEvalResult, batch_loss, evaluate_causal, generate_samples
from trainer.export.save import save_causal_lm
from trainer.formats.rundir import MODEL_DIR, samples_file
from trainer.loop.context import Run
from trainer.loop.train import TrainOutcome
from trainer.model.build import LoadPlan, build_causal_lm
from trainer.protocols import ArtifactSink, ShardStore


class CausalLmRecipe:
    def __init__(self, spec: RunSpec) -> None:
        self.spec = spec
        self.eval_batch = spec.job.training.effective_eval_batch_size()
        self.prompts: list[list[int]] | None = None  # generation prompts, from validation
        self.eos_id: int | None = None

    def open_split(self, store: ShardStore) -> CausalSplit:
        return CausalSplit(store)

    def build_model(self, load: LoadPlan) -> torch.nn.Module:
        job = self.spec.job
        model = build_causal_lm(
            self.spec.model_dir, job.peft, job.training.gradient_checkpointing, load
        )
        self.eos_id = getattr(model.config, "eos_token_id", None)
        return model

    def run_facts(self, train: CausalSplit) -> dict[str, Any]:
        manifest = train.manifest
        return {
            "task": "causal-lm",
            "data_format": manifest.data_format,
            "packing": manifest.packing,
            "train_examples": manifest.examples,
            "train_rows": manifest.total_rows,
            "packing_efficiency": manifest.packing_efficiency(),
        }

    def loss(self, engine: Engine, batch: CausalBatch) -> torch.Tensor:
        return batch_loss(engine, batch)[0]

    def evaluate(self, engine: Engine, split: CausalSplit) -> CausalEvalResult:
        return evaluate_causal(engine, split, self.eval_batch)

    def after_evaluation(
        self, engine: Engine, step: int, run: Run, validation: CausalSplit
    ) -> None:
        """Collective: greedy continuations of the first validation prompts; rank 0 sends them."""
        wanted = self.spec.job.training.generate_samples
        if self.prompts is None:
            self.prompts = validation.prompts(wanted) if wanted else []
        if not self.prompts:
            return
        max_new = self.spec.job.training.generate_max_new_tokens
        samples = generate_samples(engine, self.prompts, max_new, self.eos_id)
        if run.is_rank_zero:
            self._send_samples(run.io.artifacts, step, self.prompts, samples)

    def test_facts(
        self, train: CausalSplit, test: CausalEvalResult, outcome: TrainOutcome
    ) -> dict[str, Any]:
        tokens, slots = outcome.token_slots
        return {"train_token_slot_efficiency": tokens / slots if slots else None}

    def save(
        self, state: dict[str, torch.Tensor], test: CausalEvalResult, sink: ArtifactSink
    ) -> None:
        with tempfile.TemporaryDirectory(prefix="ftlaunch-export-") as tmp:
            sink.put_dir(save_causal_lm(state, self.spec, Path(tmp) / MODEL_DIR), MODEL_DIR)

    def _send_samples(
        self,
        sink: ArtifactSink,
        step: int,
        prompts: list[list[int]],
        samples: list[list[int]],
    ) -> None:
        """samples/step-N.jsonl on the head: prompt and greedy continuation, as text and ids."""
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(self.spec.model_dir)
        with tempfile.TemporaryDirectory(prefix="ftlaunch-samples-") as tmp:
            path = Path(tmp) / "samples.jsonl"
            with path.open("w") as fh:
                for prompt, sample in zip(prompts, samples, strict=True):
                    row = {
                        "step": step,
                        "prompt": tokenizer.decode(prompt),
                        "generated": tokenizer.decode(sample),
                        "generated_ids": sample,
                    }
                    fh.write(json.dumps(row) + "\n")
            sink.put_file(path, samples_file(step))
