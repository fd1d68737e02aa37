"""Causal LM without Ray: the data path and loss checked directly on tiny GPT-2 and Llama (masked
tokens get no gradient; packed and unpacked rows give the same loss and gradients), and the
training loop on 2 gloo ranks (loss goes down, samples are written, the saved model generates)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.fixtures import make_causal_dataset, make_tiny_causal_lm, run_job_rank, write_jsonl
from tests.integration.conftest import free_port

pytestmark = [pytest.mark.dist]


@pytest.fixture(scope="module")
def causal_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("causal-models")
    return {arch: make_tiny_causal_lm(root / arch, arch) for arch in ("gpt2", "llama")}


def _prepare(data: Path, model: Path, fmt: str, packing: bool, cache: Path, max_length: int = 64):
    from launcher.data.causal import CausalFormat
    from launcher.data.sources import SplitSource
    from launcher.data.tokenize import TokenizeOptions, prepare_split

    causal = CausalFormat(fmt, packing)
    source = SplitSource("data.train", (data,), "text", "label", causal.columns())
    options = TokenizeOptions(model, max_length, [], causal=causal)
    return prepare_split(source, "train", options, cache).directory


def _split(directory: Path):
    from trainer.data.causal import CausalSplit
    from trainer.formats.shard_stores import open_store

    return CausalSplit(open_store(str(directory)))


def _all_rows(split):
    rows = np.arange(split.num_rows)
    return split.collate(rows, split.manifest.pad_token_id)


def _nll_and_grads(model, batch):
    """Summed next-token NLL of a batch and the gradient it gives every parameter."""
    from trainer.eval.causal import token_nll

    model.zero_grad()
    logits = model(**batch.model_inputs(model.device)).logits
    total, count = token_nll(logits, batch.labels)
    total.backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    return total.item(), int(count), grads


@pytest.mark.timeout(120)
@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_packed_and_unpacked_rows_give_the_same_loss_and_gradients(
    tmp_path: Path, causal_models: dict[str, Path], arch: str
) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    data = make_causal_dataset(tmp_path / "data", "prompt-completion", n_train=48)["train"]
    model_dir = causal_models[arch]
    packed = _split(_prepare(data, model_dir, "prompt-completion", True, tmp_path / "c"))
    plain = _split(_prepare(data, model_dir, "prompt-completion", False, tmp_path / "c"))
    assert plain.num_rows == 48 and packed.num_rows < 48 / 2  # several examples per packed row
    assert packed.manifest.packing_efficiency() > 0.8

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model.config.use_cache = False
    nll_packed, count_packed, grads_packed = _nll_and_grads(model, _all_rows(packed))
    nll_plain, count_plain, grads_plain = _nll_and_grads(model, _all_rows(plain))
    assert count_packed == count_plain == packed.manifest.loss_tokens > 0
    assert nll_packed == pytest.approx(nll_plain, rel=1e-5)
    for name, grad in grads_plain.items():
        torch.testing.assert_close(grads_packed[name], grad, rtol=1e-4, atol=1e-6, msg=name)

    # Control: the same packed rows with attention allowed across examples score differently.
    batch = _all_rows(packed)
    crossing = batch.model_inputs(model.device) | {"position_ids": None}
    from trainer.eval.causal import token_nll

    with torch.no_grad():
        leaked, _ = token_nll(model(**crossing).logits, batch.labels)
    assert float(leaked) != pytest.approx(nll_plain, rel=1e-4)


@pytest.mark.timeout(120)
def test_masked_tokens_contribute_no_gradient(
    tmp_path: Path, causal_models: dict[str, Path]
) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    from trainer.eval.causal import token_nll

    def conversation(last_user_turn: str) -> dict:
        return {
            "messages": [
                {"role": "user", "content": "which animal is red?"},
                {"role": "assistant", "content": "the cat"},
                {"role": "user", "content": last_user_turn},
            ]
        }

    model_dir = causal_models["gpt2"]
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    batches = []
    for i, last in enumerate(["again", "which animal is green and blue?"]):
        data = write_jsonl(tmp_path / f"chat{i}.jsonl", [conversation(last)] * 2)
        batches.append(_all_rows(_split(_prepare(data, model_dir, "chat", False, tmp_path / "c"))))
    # Only the assistant turn is scored; the trailing user turn differs in content and length.
    assert batches[0].loss_tokens() == batches[1].loss_tokens() > 0
    assert batches[0].input_ids.shape != batches[1].input_ids.shape

    _, _, first = _nll_and_grads(model, batches[0])
    _, _, second = _nll_and_grads(model, batches[1])
    for name, grad in first.items():
        torch.testing.assert_close(second[name], grad, rtol=1e-5, atol=1e-6, msg=name)

    # And directly: the loss's gradient w.r.t. the logits is zero at every unscored position.
    batch = batches[1]
    logits = model(**batch.model_inputs(model.device)).logits.detach().requires_grad_(True)
    total, _ = token_nll(logits, batch.labels)
    total.backward()
    scored = torch.zeros_like(batch.labels, dtype=torch.bool)
    scored[:, :-1] = batch.labels[:, 1:] != -100
    assert logits.grad[~scored].abs().max() == 0
    assert logits.grad[scored].abs().sum(-1).min() > 0


@pytest.mark.timeout(300)
def test_loop_lowers_loss_on_a_repetitive_corpus_and_the_model_generates(
    tmp_path: Path, causal_models: dict[str, Path]
) -> None:
    import torch
    import torch.multiprocessing as mp
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trainer.config import JobConfig
    from trainer.config.spec import RunSpec

    # Llama here; GPT-2 (tied embeddings, ZeRO-3) goes through the loop in test_causal_ray.py.
    model_dir = causal_models["llama"]
    data = make_causal_dataset(tmp_path / "data", "text", n_train=96)
    dirs = {k: str(_prepare(p, model_dir, "text", True, tmp_path / "c")) for k, p in data.items()}
    job = JobConfig.model_validate(
        {
            "model": {"path": str(model_dir), "task": "causal-lm"},
            "data": {k: str(p) for k, p in data.items()} | {"max_length": 64, "packing": True},
            "training": {
                "epochs": 3,
                "micro_batch_size": 4,
                "eval_every": 6,
                "log_every": 3,
                "generate_samples": 2,
                "generate_max_new_tokens": 8,
            },
            "optim": {"lr": 0.01, "warmup_ratio": 0.0},
            "engine": {"zero_stage": 2},
        }
    )
    spec = RunSpec(job=job, model_dir=str(model_dir), split_dirs=dirs, label_names=[], run_id="c")
    run_dir = tmp_path / "run"
    mp.spawn(run_job_rank, args=(2, free_port(), spec.model_dump_json(), str(run_dir)), nprocs=2)

    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in records if r["event"] == "eval"]
    summary = next(r for r in records if r["event"] == "summary")
    losses = [r["val_loss"] for r in evals]
    assert len(losses) >= 3 and losses == sorted(losses, reverse=True)
    assert losses[-1] < 0.8 * losses[0]
    assert summary["best_validation"]["val_perplexity"] == pytest.approx(
        np.exp(summary["best_validation"]["val_loss"])
    )
    assert summary["packing"] is True and 0.8 < summary["packing_efficiency"] <= 1
    assert summary["test"]["tokens"] > 0
    samples = (run_dir / "samples" / f"step-{evals[-1]['step']}.jsonl").read_text().splitlines()
    assert len(samples) == 2 and all(json.loads(s)["prompt"] for s in samples)

    model = AutoModelForCausalLM.from_pretrained(run_dir / "model")
    tokenizer = AutoTokenizer.from_pretrained(run_dir / "model")
    ids = tokenizer("the red cat sees the red", return_tensors="pt").input_ids
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=6, min_new_tokens=6, do_sample=False)
    assert out.shape[1] == ids.shape[1] + 6
