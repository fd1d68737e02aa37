"""What predict and generate share: loading a model directory (merged, or a peft adapter on its
base), reading JSONL inputs in bounded batches, and the command-line error convention (one
`error: ` line on stderr, exit code 2) that the launcher passes through."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

ADAPTER_CONFIG = "adapter_config.json"
USER_ERROR = 2


class InputError(Exception):
    """A bad input or model directory; the message is the user's one line."""


def load_model(model_dir: Path, auto_class: Any, **kwargs: Any) -> Any:
    """A merged model directory, or a peft adapter loaded on the base model it names.

    Raises:
        InputError: the adapter's base model is not reachable here.
    """
    import torch

    config_file = model_dir / ADAPTER_CONFIG
    if not config_file.is_file():
        return auto_class.from_pretrained(model_dir, dtype=torch.float32, **kwargs).eval()
    from peft import PeftModel

    base_dir = json.loads(config_file.read_text()).get("base_model_name_or_path") or ""
    if not Path(base_dir).is_dir():
        raise InputError(
            f"MODEL_DIR: {model_dir} is a peft adapter whose base model {base_dir!r} is not a "
            "directory here"
        )
    base = auto_class.from_pretrained(base_dir, dtype=torch.float32, **kwargs)
    return PeftModel.from_pretrained(base, str(model_dir)).eval()


def jsonl_batches(path: Path, batch_size: int) -> Iterator[list[tuple[int, dict[str, Any]]]]:
    """(line number, row) batches of a JSONL file, read lazily: memory stays one batch.

    Raises:
        InputError: a line that is not a JSON object.
    """
    batch: list[tuple[int, dict[str, Any]]] = []
    with path.open() as fh:
        for number, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                raise InputError(f"--input: {path} line {number} is not JSON") from None
            if not isinstance(row, dict):
                raise InputError(f"--input: {path} line {number} is not a JSON object")
            batch.append((number, row))
            if len(batch) == batch_size:
                yield batch
                batch = []
    if batch:
        yield batch


def count_lines(path: Path) -> int:
    with path.open("rb") as fh:
        return sum(1 for line in fh if line.strip())


@contextmanager
def output_stream(output: Path | None) -> Iterator[IO[str]]:
    """stdout, or a temporary file renamed onto `output` only when everything was written (an
    interrupted run leaves an earlier output file as it was)."""
    if output is None:
        yield sys.stdout
        return
    output.parent.mkdir(parents=True, exist_ok=True)
    partial = output.with_name(f".{output.name}.{os.getpid()}.partial")
    try:
        with partial.open("w") as fh:
            yield fh
        os.replace(partial, output)
    finally:
        partial.unlink(missing_ok=True)


def quiet_transformers() -> None:
    """Only our progress bar and our one-line errors on stderr: no weight-loading bars or load
    reports (a classifier head that a plain encoder lacks is reported at length otherwise)."""
    from transformers.utils import logging

    logging.set_verbosity_error()
    logging.disable_progress_bar()


def run_cli(main: Callable[[list[str]], None], argv: list[str]) -> int:
    """Run `main`; an InputError becomes one `error: ` line and exit code 2."""
    quiet_transformers()
    try:
        main(argv)
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return USER_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0
