"""`ftlaunch predict RUN_DIR|MODEL_DIR --input rows.jsonl [--output out.jsonl]`: labels and class
probabilities from a trained classifier; the work runs in `python -m trainer.infer.predict`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from launcher.inference import (
    check_input,
    check_output,
    check_positive,
    check_task,
    find_model,
    run_child,
)

PREDICT_MODULE = "trainer.infer.predict"


@dataclass(frozen=True)
class PredictRequest:
    target: Path
    input: Path
    output: Path | None = None
    batch_size: int = 32
    text_column: str | None = None  # default: the run's data.text_column
    max_length: int | None = None  # default: the run's data.max_length


def run_predict(request: PredictRequest) -> int:
    """Returns the child's exit code.

    Raises:
        UserError: no classifier at the target, a missing input, a bad option.
    """
    model = find_model(request.target)
    check_task(model, "sequence-classification", "generate")
    check_input(request.input)
    check_output(request.output)
    check_positive(request.batch_size, "--batch-size")
    text_column = request.text_column or model.data.get("text_column") or "text"
    max_length = request.max_length or model.data.get("max_length") or 512
    check_positive(max_length, "--max-length")
    args = [str(model.directory), str(request.input), "--batch-size", str(request.batch_size)]
    args += ["--text-column", text_column, "--max-length", str(max_length)]
    if request.output is not None:
        args += ["--output", str(request.output)]
    return run_child(PREDICT_MODULE, args)
