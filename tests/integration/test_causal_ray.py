"""Causal LM end to end through the real CLI: 2 Ray workers (the session head), tiny GPT-2, chat
data with packing; it trains, `ftlaunch export` consolidates the checkpoint, and the exported model
loads with AutoModelForCausalLM, generates, and equals the model the run saved."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.fixtures import ftlaunch, make_causal_dataset, make_tiny_causal_lm
from tests.integration.conftest import cluster_env

pytestmark = [pytest.mark.ray, pytest.mark.dist]


def _greedy(model_dir: Path, prompt: str, new_tokens: int = 8) -> list[int]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    ids = AutoTokenizer.from_pretrained(model_dir)(prompt, return_tensors="pt").input_ids
    with torch.no_grad():
        out = model.generate(
            ids, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False
        )
    return out[0, ids.shape[1] :].tolist()


@pytest.mark.timeout(420)
@pytest.mark.parametrize("overrides", [["engine.zero_stage=3"]], ids=["zero3"])
def test_cli_trains_gpt2_on_chat_and_the_export_generates(
    tmp_path: Path, ray_head: dict[str, str], overrides: list[str]
) -> None:
    from safetensors.torch import load_file

    model = make_tiny_causal_lm(tmp_path / "gpt2", "gpt2")
    data = make_causal_dataset(tmp_path / "data", "chat", n_train=128)
    out = tmp_path / "out"
    job = tmp_path / "job.yaml"
    job.write_text(
        f"""
name: tiny-causal
model: {{path: {model}, task: causal-lm}}
data: {{train: {data["train"]}, validation: {data["validation"]}, test: {data["test"]},
        format: chat, packing: true, max_length: 96, cache_dir: {tmp_path / "cache"}}}
optim: {{lr: 0.02, warmup_ratio: 0.0}}
training: {{epochs: 4, micro_batch_size: 4, log_every: 4, eval_every: 8,
            checkpoint_every: 32, generate_samples: 2, generate_max_new_tokens: 6}}
cluster: {{num_workers: 2}}
output: {{dir: {out}}}
"""
    )
    sets = [a for o in overrides for a in ("--set", o)]
    run = ftlaunch(
        "run", str(job), "--address", ray_head["address"], *sets, env=cluster_env(ray_head)
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert "packing efficiency" in run.stdout

    summary = json.loads((out / "summary.json").read_text())
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in records if r["event"] == "eval"]
    assert summary["task"] == "causal-lm" and summary["data_format"] == "chat"
    assert summary["world_size"] == 2 and summary["zero_stage"] == 3
    losses = [r["val_loss"] for r in evals]
    assert len(losses) == 4 and losses[-1] < 0.8 * losses[0]
    assert summary["test"]["perplexity"] < evals[0]["val_perplexity"]
    assert (out / "samples" / f"step-{evals[0]['step']}.jsonl").is_file()

    exported = ftlaunch("export", str(out), "--out", str(tmp_path / "exported"), timeout=200)
    assert exported.returncode == 0, exported.stderr[-3000:]
    assert "reload verified" in exported.stdout
    ours, saved = (
        load_file(str(tmp_path / "exported" / "model.safetensors")),
        load_file(str(out / "model" / "model.safetensors")),
    )
    import torch

    for name, tensor in saved.items():
        torch.testing.assert_close(ours[name], tensor, rtol=0, atol=1e-5, msg=name)
    prompt = "<|user|>which animal is red?<|end|><|assistant|>"
    tokens = _greedy(tmp_path / "exported", prompt)
    assert len(tokens) == 8 and tokens == _greedy(out / "model", prompt)
