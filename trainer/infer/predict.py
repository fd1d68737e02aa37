"""`python -m trainer.infer.predict MODEL_DIR INPUT [--output FILE] ...`: labels and class
probabilities of a trained classifier for every row of a JSONL file.

Run by `ftlaunch predict` (launcher/commands/predict.py). Rows are read, scored and written one
batch at a time, so memory does not grow with the input; labels come from the run's
label_map.json (the model's id2label otherwise). Each output line is the input row plus
`prediction` and `probabilities` ({label: p}).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from trainer.formats.rundir import LABEL_MAP_FILE
from trainer.infer.common import (
    InputError,
    count_lines,
    jsonl_batches,
    load_model,
    output_stream,
    run_cli,
)


def run_labels(model_dir: Path) -> list[str] | None:
    """The run's labels by id from label_map.json (None for a model saved without one)."""
    label_map = model_dir / LABEL_MAP_FILE
    return list(json.loads(label_map.read_text())["labels"]) if label_map.is_file() else None


def config_labels(config: Any) -> list[str]:
    return [str(config.id2label[i]) for i in range(config.num_labels)]


def texts_of(batch: list[tuple[int, dict[str, Any]]], column: str, where: Path) -> list[str]:
    """The text column of every row.

    Raises:
        InputError: a row without a string in `column`.
    """
    texts = []
    for number, row in batch:
        value = row.get(column)
        if not isinstance(value, str):
            raise InputError(
                f"--input: {where} line {number} has no text in column {column!r} "
                f"(columns: {', '.join(row) or 'none'}; choose one with --text-column)"
            )
        texts.append(value)
    return texts


def predict(args: argparse.Namespace) -> None:
    import torch
    from rich.console import Console
    from rich.progress import Progress
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    labels = run_labels(args.model_dir)
    # an adapter's base gets the run's head size (its own config knows nothing of the labels)
    head = {"num_labels": len(labels)} if labels else {}
    model = load_model(args.model_dir, AutoModelForSequenceClassification, **head)
    tokenizer = AutoTokenizer.from_pretrained(args.model_dir)
    labels = labels or config_labels(model.config)
    progress = Progress(console=Console(stderr=True), transient=True)
    task = progress.add_task("predicting", total=count_lines(args.input))
    with progress, output_stream(args.output) as out, torch.inference_mode():
        for batch in jsonl_batches(args.input, args.batch_size):
            encoded = tokenizer(
                texts_of(batch, args.text_column, args.input),
                truncation=True,
                max_length=args.max_length,
                padding=True,
                return_tensors="pt",
            )
            logits = model(**encoded).logits.float()
            best_ids = logits.argmax(-1).tolist()  # as the run's evaluation decides
            probabilities = logits.softmax(-1).tolist()
            for (_, row), best, probs in zip(batch, best_ids, probabilities, strict=True):
                scores = {label: round(p, 6) for label, p in zip(labels, probs, strict=True)}
                out.write(json.dumps(row | {"prediction": labels[best], "probabilities": scores}))
                out.write("\n")
            progress.advance(task, len(batch))


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m trainer.infer.predict")
    parser.add_argument("model_dir", type=Path)
    parser.add_argument("input", type=Path)
    parser.add_argument("--output", type=Path, default=None)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--text-column", default="text")
    parser.add_argument("--max-length", type=int, default=512)
    return parser.parse_args(argv)


def main(argv: list[str]) -> None:
    predict(parse_args(argv))


if __name__ == "__main__":
    sys.exit(run_cli(main, sys.argv[1:]))
