"""`ftlaunch generate` on a tiny decoder (merged model and peft adapter, plain and chat prompts)
against transformers' own greedy generate as the reference, and `ftlaunch predict`'s one-line
errors, launcher side (no torch) and child side. The demo classifier's predictions are checked
against the run's own predictions_test.jsonl in tests/integration/test_demo_e2e.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.fixtures import assert_user_error, ftlaunch, make_tiny_causal_lm, write_jsonl

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]
CHAT = [{"role": "user", "content": "which animal is red?"}]


@pytest.fixture(scope="module")
def decoder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_causal_lm(tmp_path_factory.mktemp("decoder"), "llama", seed=3)


def greedy(model, tokenizer, row: dict, new_tokens: int) -> str:
    import torch

    if "messages" in row:
        ids = tokenizer.apply_chat_template(
            row["messages"], add_generation_prompt=True, return_tensors="pt", return_dict=True
        )["input_ids"]
    else:
        ids = tokenizer(row["prompt"], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        out = model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=new_tokens,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
        )
    return tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)


def test_generate_matches_transformers_for_models_and_adapters(
    decoder: Path, tmp_path: Path
) -> None:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(decoder)
    base = AutoModelForCausalLM.from_pretrained(decoder).eval()
    rows = [{"prompt": "the red cat sees", "id": 1}, {"messages": CHAT, "id": 2}]
    prompts = write_jsonl(tmp_path / "prompts.jsonl", rows)
    result = ftlaunch(
        "generate",
        str(decoder),
        "--input",
        str(prompts),
        "--max-new-tokens",
        "6",
        "--output",
        str(tmp_path / "out.jsonl"),
    )
    assert result.returncode == 0, result.stderr
    written = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [r["id"] for r in written] == [1, 2]  # the input rows come back with a completion
    assert [r["completion"] for r in written] == [greedy(base, tokenizer, r, 6) for r in rows]

    torch.manual_seed(0)
    lora = LoraConfig(
        r=4, target_modules="all-linear", init_lora_weights=False, task_type="CAUSAL_LM"
    )
    adapted = get_peft_model(AutoModelForCausalLM.from_pretrained(decoder), lora).eval()
    adapted.save_pretrained(tmp_path / "adapter")
    tokenizer.save_pretrained(tmp_path / "adapter")
    # one prompt, sent as the user's turn through the chat template, to the adapter on its base
    result = ftlaunch(
        "generate",
        str(tmp_path / "adapter"),
        "--prompt",
        CHAT[0]["content"],
        "--chat",
        "--max-new-tokens",
        "6",
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == greedy(adapted, tokenizer, {"messages": CHAT}, 6) + "\n"
    assert result.stdout != greedy(base, tokenizer, {"messages": CHAT}, 6) + "\n"  # adapter used


def test_inference_errors_are_one_line(decoder: Path, tiny_bert: Path, tmp_path: Path) -> None:
    rows = write_jsonl(tmp_path / "rows.jsonl", [{"text": "fine"}, {"body": "no text column"}])
    assert_user_error(
        ftlaunch("predict", str(tmp_path), "--input", str(rows)), "RUN_DIR:", "holds no model"
    )
    assert_user_error(
        ftlaunch("predict", str(decoder), "--input", str(rows)),
        "is a causal-lm model; use ftlaunch generate",
    )
    assert_user_error(
        ftlaunch("generate", str(decoder), "--prompt", "x", "--input", str(rows)),
        "--prompt/--input",
    )
    assert_user_error(
        ftlaunch("predict", str(tiny_bert), "--input", str(tmp_path / "nope.jsonl")), "--input:"
    )
    out = tmp_path / "predictions.jsonl"
    out.write_text("earlier\n")
    result = ftlaunch("predict", str(tiny_bert), "--input", str(rows), "--output", str(out))
    assert_user_error(result, f"--input: {rows} line 2 has no text in column 'text'")
    assert out.read_text() == "earlier\n"  # a failed run leaves an earlier output as it was
