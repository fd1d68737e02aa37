"""`ftlaunch predict` and `ftlaunch generate`: inference on a trained model. Registered on the app
by launcher/cli.py; the torch work runs in child processes (launcher/commands/predict.py,
generate.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from launcher.cli_support import fail
from launcher.errors import USER_ERROR_EXIT_CODE, UserError


def predict(
    target: Annotated[
        Path, typer.Argument(metavar="RUN_DIR|MODEL_DIR", help="A finished run or a model.")
    ],
    input_: Annotated[Path, typer.Option("--input", help="JSONL rows with the text column.")],
    output: Annotated[
        Path | None, typer.Option(help="JSONL file for the predictions (default: stdout).")
    ] = None,
    batch_size: Annotated[int, typer.Option(help="Rows per forward pass.")] = 32,
    text_column: Annotated[
        str | None, typer.Option(help="Column with the text (default: the run's).")
    ] = None,
    max_length: Annotated[
        int | None, typer.Option(help="Truncate to this many tokens (default: the run's).")
    ] = None,
) -> None:
    """Label every row of a JSONL file with a trained classifier: prediction + probabilities."""
    from launcher.commands.predict import PredictRequest, run_predict

    try:
        request = PredictRequest(target, input_, output, batch_size, text_column, max_length)
        code = run_predict(request)
    except UserError as exc:
        fail(USER_ERROR_EXIT_CODE, *exc.messages)
    raise typer.Exit(code)


def generate(
    target: Annotated[
        Path, typer.Argument(metavar="RUN_DIR|MODEL_DIR", help="A finished causal-lm run or model.")
    ],
    prompt: Annotated[str | None, typer.Option(help="One prompt; prints its completion.")] = None,
    input_: Annotated[
        Path | None,
        typer.Option("--input", help="JSONL rows with 'prompt' (or 'messages' for chat)."),
    ] = None,
    chat: Annotated[
        bool, typer.Option("--chat", help="Send prompts as a user turn via the chat template.")
    ] = False,
    max_new_tokens: Annotated[int, typer.Option(help="Tokens to generate per prompt.")] = 64,
    temperature: Annotated[float, typer.Option(help="0: greedy; above: sampling.")] = 0.0,
    seed: Annotated[int, typer.Option(help="Sampling seed.")] = 0,
    output: Annotated[
        Path | None, typer.Option(help="Write here instead of stdout (JSONL for --input).")
    ] = None,
) -> None:
    """Generate with a trained causal LM (merged model or adapter), optionally as a chat."""
    from launcher.commands.generate import GenerateRequest, run_generate

    try:
        request = GenerateRequest(
            target, prompt, input_, chat, max_new_tokens, temperature, seed, output
        )
        code = run_generate(request)
    except UserError as exc:
        fail(USER_ERROR_EXIT_CODE, *exc.messages)
    raise typer.Exit(code)
