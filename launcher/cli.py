"""The `ftlaunch` command line. Heavy imports (ray, pyarrow) happen inside commands, so
`ftlaunch --help` is instant and never imports torch."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from launcher.errors import (
    PREEMPTED_EXIT_CODE,
    TRAINING_FAILED_EXIT_CODE,
    USER_ERROR_EXIT_CODE,
    UserError,
)

app = typer.Typer(
    name="ftlaunch",
    help="Distributed fine-tuning launcher: one YAML, Ray-scheduled DeepSpeed workers.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
err_console = Console(stderr=True, highlight=False, soft_wrap=True)


def fail(code: int, *messages: str) -> None:
    for message in messages:
        err_console.print(f"error: {message}", markup=False)
    raise typer.Exit(code)


@app.command()
def run(
    config: Annotated[Path, typer.Argument(help="Job YAML file.")],
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="Override a key: --set optim.lr=1e-4")
    ] = None,
    address: Annotated[
        str | None, typer.Option(help="Existing Ray cluster (overrides cluster.address).")
    ] = None,
    resume: Annotated[
        bool,
        typer.Option("--resume", help="Continue from the newest complete checkpoint on the head."),
    ] = False,
) -> None:
    """Fine-tune as the YAML says: prepare data, start/reach Ray, train, bring results home."""
    from cluster.ray_backend import ClusterError, Preempted, TrainingFailed
    from launcher.run import run_from_file

    console = Console(highlight=False, soft_wrap=True)
    try:
        run_from_file(config, set_ or [], address, console, resume=resume)
    except UserError as exc:
        fail(USER_ERROR_EXIT_CODE, *exc.messages)
    except ClusterError as exc:
        fail(USER_ERROR_EXIT_CODE, str(exc))
    except Preempted as exc:
        saved = (
            f"checkpoint {exc.committed} committed"
            if exc.committed
            else "no checkpoint within the grace period"
        )
        fail(PREEMPTED_EXIT_CODE, f"preempted (SIGTERM): {saved}; continue with --resume")
    except TrainingFailed as exc:
        if exc.is_data_error:
            fail(USER_ERROR_EXIT_CODE, exc.message)
        fail(TRAINING_FAILED_EXIT_CODE, f"{exc} (earlier contents of output.dir are untouched)")


@app.command()
def validate(
    config: Annotated[Path, typer.Argument(help="Job YAML file.")],
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="Override a key: --set optim.lr=1e-4")
    ] = None,
) -> None:
    """Check a job file against the schema and print the fully resolved config."""
    from launcher.config_loading import dump_job_config, load_job_config

    try:
        job = load_job_config(config, set_ or [])
    except UserError as exc:
        fail(USER_ERROR_EXIT_CODE, *exc.messages)
    typer.echo(dump_job_config(job), nl=False)


@app.command()
def prepare(
    inputs: Annotated[
        list[Path], typer.Argument(help="JSONL/CSV/TSV/Parquet files or datasets directories.")
    ],
    tokenizer: Annotated[
        str, typer.Option(help="Model directory (or alias) whose tokenizer to use.")
    ],
    out: Annotated[Path, typer.Option(help="Output directory for shards and manifest.json.")],
    text_column: Annotated[str, typer.Option(help="Column with the text.")] = "text",
    label_column: Annotated[str, typer.Option(help="Column with the label.")] = "label",
    max_length: Annotated[int, typer.Option(help="Truncate to this many tokens.")] = 128,
    shard_size: Annotated[str, typer.Option(help="Target shard size, e.g. 64MB.")] = "64MB",
    num_proc: Annotated[
        int | None, typer.Option(help="Tokenizer threads (default: all cores).")
    ] = None,
    labels_from: Annotated[
        Path | None, typer.Option(help="Reuse the label map of a prepared train split.")
    ] = None,
    split: Annotated[str, typer.Option(help="Split name recorded in the manifest.")] = "train",
) -> None:
    """Tokenize inputs into Arrow IPC shards + manifest.json (streamed, deterministic, idempotent)."""
    from launcher.prepare_command import run_prepare

    try:
        run_prepare(
            inputs,
            tokenizer,
            out,
            text_column,
            label_column,
            max_length,
            shard_size,
            num_proc,
            labels_from,
            split,
            Console(highlight=False, soft_wrap=True),
        )
    except UserError as exc:
        fail(USER_ERROR_EXIT_CODE, *exc.messages)


@app.command()
def metrics(
    run_dir: Annotated[
        Path, typer.Argument(help="A run's output.dir (or a live .run-* inside it).")
    ],
    plot: Annotated[
        Path | None, typer.Option(help="Write loss/validation/throughput curves to this PNG.")
    ] = None,
) -> None:
    """Show a run's metrics; --plot draws them with matplotlib."""
    from launcher.metrics_command import run_metrics

    try:
        run_metrics(run_dir, plot, Console(highlight=False, soft_wrap=True))
    except UserError as exc:
        fail(USER_ERROR_EXIT_CODE, *exc.messages)


@app.command()
def export(
    run_dir: Annotated[Path, typer.Argument(help="A run's output.dir (with checkpoints/).")],
    out: Annotated[Path, typer.Option(help="Directory for the Hugging Face model.")],
    checkpoint: Annotated[
        str | None, typer.Option(help="Tag such as step-40; default: newest.")
    ] = None,
    adapter_only: Annotated[
        bool,
        typer.Option(
            "--adapter-only", help="Write the PEFT adapter (PeftModel format), not a merged model."
        ),
    ] = False,
) -> None:
    """Consolidate a ZeRO checkpoint (PEFT adapter merged) into a plain safetensors model directory."""
    from launcher.export_command import run_export

    try:
        code, message = run_export(run_dir, checkpoint, out, adapter_only)
    except UserError as exc:
        fail(USER_ERROR_EXIT_CODE, *exc.messages)
    if code:
        fail(code, message)
    typer.echo(message)


@app.command("demo-data")
def demo_data(
    out: Annotated[Path, typer.Option(help="Directory for train/validation/test JSONL.")] = Path(
        "data/demo"
    ),
    seed: Annotated[int, typer.Option(help="Generator seed.")] = 0,
) -> None:
    """Write the demo's generated 3-class review dataset (deterministic)."""
    from launcher.demo_data import write_demo_dataset

    for split, path in write_demo_dataset(out, seed=seed).items():
        typer.echo(f"{split}: {path}")


@app.command()
def models() -> None:
    """List the model aliases usable in model.path."""
    from launcher.models import MODEL_ALIASES

    for alias, (package, _) in MODEL_ALIASES.items():
        typer.echo(f"{alias}\t(pip package {package.replace('_', '-')})")


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        err_console.print("interrupted")
        sys.exit(130)


if __name__ == "__main__":
    main()
