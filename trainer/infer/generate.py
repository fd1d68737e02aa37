"""`python -m trainer.infer.generate MODEL_DIR (--prompt TEXT | --input FILE) [--chat] ...`:
continuations from a trained causal LM (a merged model directory or a peft adapter).

Run by `ftlaunch generate` (launcher/commands/generate.py). With --chat, or for input rows that
hold `messages`, the prompt is rendered by the tokenizer's own chat template
(`apply_chat_template(..., add_generation_prompt=True)`), the same rendering training used.
A single --prompt prints the completion; an --input JSONL gets one line per row: the row plus
`completion`. Greedy decoding unless --temperature > 0 (then sampled, seeded by --seed).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from trainer.infer.common import (
    InputError,
    count_lines,
    jsonl_batches,
    load_model,
    output_stream,
    run_cli,
)


class Generator:
    def __init__(self, args: argparse.Namespace) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        torch.manual_seed(args.seed)
        self.args = args
        self.model = load_model(args.model_dir, AutoModelForCausalLM)
        self.tokenizer = AutoTokenizer.from_pretrained(args.model_dir)

    def prompt_ids(self, row: dict[str, Any], where: str) -> Any:
        """Token ids of one prompt: a chat (messages, or a prompt sent as the user's turn with
        --chat) through the chat template, otherwise the prompt text as it is.

        Raises:
            InputError: no prompt, or a chat with a tokenizer that has no chat template.
        """
        messages = row.get("messages")
        if messages is None and self.args.chat and isinstance(row.get("prompt"), str):
            messages = [{"role": "user", "content": row["prompt"]}]
        if messages is not None:
            if not self.tokenizer.chat_template:
                raise InputError(
                    f"--chat: the tokenizer in {self.args.model_dir} has no chat template"
                )
            return self.tokenizer.apply_chat_template(
                messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
            )["input_ids"]
        if not isinstance(row.get("prompt"), str):
            raise InputError(f"{where}: needs a 'prompt' string or a 'messages' list")
        return self.tokenizer(row["prompt"], return_tensors="pt")["input_ids"]

    def complete(self, row: dict[str, Any], where: str) -> str:
        import torch

        ids = self.prompt_ids(row, where)
        sample = self.args.temperature > 0
        with torch.inference_mode():
            output = self.model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=self.args.max_new_tokens,
                do_sample=sample,
                temperature=self.args.temperature if sample else None,
                top_p=None,
                top_k=None,
                pad_token_id=self.tokenizer.pad_token_id or self.tokenizer.eos_token_id,
            )
        return self.tokenizer.decode(output[0, ids.shape[1] :], skip_special_tokens=True)


def generate(args: argparse.Namespace) -> None:
    from rich.console import Console
    from rich.progress import Progress

    generator = Generator(args)
    if args.prompt is not None:
        with output_stream(args.output) as out:
            out.write(generator.complete({"prompt": args.prompt}, "--prompt") + "\n")
        return
    progress = Progress(console=Console(stderr=True), transient=True)
    task = progress.add_task("generating", total=count_lines(args.input))
    with progress, output_stream(args.output) as out:
        for batch in jsonl_batches(args.input, 16):
            for number, row in batch:
                completion = generator.complete(row, f"--input: {args.input} line {number}")
                out.write(json.dumps(row | {"completion": completion}) + "\n")
                out.flush()
            progress.advance(task, len(batch))


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m trainer.infer.generate")
    parser.add_argument("model_dir", type=Path)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--prompt", default=None)
    source.add_argument("--input", type=Path, default=None)
    parser.add_argument("--chat", action="store_true")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--temperature", type=float, default=0.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=Path, default=None)
    return parser.parse_args(argv)


def main(argv: list[str]) -> None:
    generate(parse_args(argv))


if __name__ == "__main__":
    sys.exit(run_cli(main, sys.argv[1:]))
