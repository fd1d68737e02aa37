"""`ftlaunch generate RUN_DIR|MODEL_DIR --prompt TEXT | --input FILE [--chat]`: continuations from
a trained causal LM; the work runs in `python -m trainer.infer.generate`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from launcher.errors import UserError
from launcher.inference import (
    check_input,
    check_output,
    check_positive,
    check_task,
    find_model,
    run_child,
)

GENERATE_MODULE = "trainer.infer.generate"


@dataclass(frozen=True)
class GenerateRequest:
    target: Path
    prompt: str | None = None
    input: Path | None = None
    chat: bool = False
    max_new_tokens: int = 64
    temperature: float = 0.0
    seed: int = 0
    output: Path | None = None


def run_generate(request: GenerateRequest) -> int:
    """Returns the child's exit code.

    Raises:
        UserError: no causal LM at the target, neither or both of --prompt and --input, a bad
            option.
    """
    model = find_model(request.target)
    check_task(model, "causal-lm", "predict")
    if (request.prompt is None) == (request.input is None):
        raise UserError("--prompt/--input: give exactly one of them")
    if request.input is not None:
        check_input(request.input)
    check_output(request.output)
    check_positive(request.max_new_tokens, "--max-new-tokens")
    if request.temperature < 0:
        raise UserError(f"--temperature: must be >= 0 (got {request.temperature})")
    args = [str(model.directory), "--max-new-tokens", str(request.max_new_tokens)]
    args += ["--temperature", str(request.temperature), "--seed", str(request.seed)]
    args += ["--prompt", request.prompt] if request.prompt is not None else []
    args += ["--input", str(request.input)] if request.input is not None else []
    args += ["--chat"] if request.chat else []
    args += ["--output", str(request.output)] if request.output is not None else []
    return run_child(GENERATE_MODULE, args)
