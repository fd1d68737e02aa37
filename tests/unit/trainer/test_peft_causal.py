"""The prompt-learning methods on decoders (model.task: causal-lm): only the virtual tokens train,
and every optimizer step lowers the loss on a fixed batch (GPT-2 and Llama, tiny, random).
prefix_tuning is refused for sequence classification (peft's classifier path cannot take a
prefix there); this is where it is shown to work."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from tests.fixtures import make_tiny_causal_lm


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
@pytest.mark.parametrize("method", ["prefix_tuning", "prompt_tuning"])
def test_prompt_learning_trains_only_its_virtual_tokens_on_a_decoder(
    tmp_path: Path, arch: str, method: str
) -> None:
    import torch
    from pydantic import TypeAdapter

    from trainer.config.peft import PeftConfig
    from trainer.model.build import build_causal_lm

    torch.manual_seed(0)
    peft = TypeAdapter(PeftConfig).validate_python({"method": method, "num_virtual_tokens": 4})
    model = build_causal_lm(make_tiny_causal_lm(tmp_path / arch, arch), peft)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("prompt_encoder" in n for n in trainable), sorted(trainable)[:5]
    ids = torch.arange(5, 29).repeat(2, 1)  # one repetitive sequence, twice
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.05)
    losses = []
    for _ in range(15):
        loss = model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=ids).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    # A random tiny model learns slowly, but steadily: every step lowers the loss.
    assert all(b < a for a, b in itertools.pairwise(losses)) and losses[-1] < losses[0] - 0.01, (
        losses
    )
