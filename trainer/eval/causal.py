"""Causal-LM loss, validation loss/perplexity across ranks, and greedy generation samples."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F

from trainer.data.causal import CausalBatch, CausalSplit
from trainer.engines.base import Engine
from trainer.formats.shards import IGNORE_INDEX


def token_nll(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of next-token negative log-likelihoods, number of scored tokens).

    Position t predicts token t+1; labels of -100 (prompt, non-assistant turns, the first token of
    every packed example, padding) contribute nothing, not even to the count.
    """
    shift_logits = logits[:, :-1].float()
    shift_labels = labels[:, 1:].to(shift_logits.device)
    total = F.cross_entropy(
        shift_logits.reshape(-1, shift_logits.shape[-1]),
        shift_labels.reshape(-1),
        ignore_index=IGNORE_INDEX,
        reduction="sum",
    )
    return total, (shift_labels != IGNORE_INDEX).sum()


def batch_loss(engine: Engine, batch: CausalBatch) -> tuple[torch.Tensor, int]:
    """Mean next-token loss of one micro-batch (what backward runs on) and its scored tokens."""
    logits = engine(**batch.model_inputs(engine.device)).logits
    total, count = token_nll(logits, batch.labels)
    return total / count.clamp(min=1), int(count)


@dataclass(frozen=True)
class CausalEvalResult:
    loss: float  # mean over every scored token of the split
    tokens: int
    num_samples: int

    @property
    def perplexity(self) -> float:
        return math.exp(min(self.loss, 700.0))

    def metrics(self, prefix: str) -> dict[str, float]:
        return {f"{prefix}_loss": self.loss, f"{prefix}_perplexity": self.perplexity}

    def summary(self) -> dict[str, float]:
        return {
            "loss": self.loss,
            "perplexity": self.perplexity,
            "tokens": self.tokens,
            "num_samples": self.num_samples,
        }

    def metric(self, name: str) -> float:
        return {"loss": self.loss, "perplexity": self.perplexity}[name]


@torch.no_grad()
def evaluate_causal(engine: Engine, split: CausalSplit, batch_size: int) -> CausalEvalResult:
    """Token-weighted loss over every row exactly once across ranks (all ranks must call this)."""
    world, rank = dist.get_world_size(), dist.get_rank()
    was_training = engine.module.training
    engine.module.eval()
    totals = torch.zeros(3, dtype=torch.float64)  # nll sum, scored tokens, rows
    for batch in split.iter_batches(split.epoch_batches(0, 0, world, rank, batch_size, False)):
        nll, count = token_nll(engine(**batch.model_inputs(engine.device)).logits, batch.labels)
        totals += torch.tensor(
            [float(nll), float(count), float(batch.num_samples())], dtype=torch.float64
        )
    engine.module.train(was_training)
    dist.all_reduce(totals)
    nll, count, rows = totals.tolist()
    return CausalEvalResult(loss=nll / max(count, 1.0), tokens=int(count), num_samples=int(rows))


@torch.no_grad()
def generate_samples(
    engine: Engine, prompts: list[list[int]], max_new_tokens: int, eos_id: int | None
) -> list[list[int]]:
    """Greedy continuations, one prompt at a time (no padding to get wrong). Every rank runs the
    same prompts: under ZeRO-3 each forward gathers parameters collectively, and identical weights
    plus greedy decoding give every rank the same number of forwards, so the ranks stay in step
    without transformers' `synced_gpus` handshake."""
    was_training = engine.module.training
    engine.module.eval()
    decoder: Any = engine.module  # a transformers decoder; nn.Module's typing hides `generate`
    outputs = []
    for prompt in prompts:
        ids = torch.tensor([prompt], device=engine.device)
        generated = decoder.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            eos_token_id=eos_id,
            pad_token_id=eos_id if eos_id is not None else 0,
        )
        outputs.append(generated[0, len(prompt) :].tolist())
    engine.module.train(was_training)
    return outputs
