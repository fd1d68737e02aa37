"""The `ftlaunch` command line. Heavy imports (ray, pyarrow) happen inside commands, so
`ftlaunch --help` is instant and never imports torch."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from launcher.errors import TRAINING_FAILED_EXIT_CODE, USER_ERROR_EXIT_CODE, UserError

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
) -> None:
    """Fine-tune as the YAML says: prepare data, start/reach Ray, train, bring results home."""
    from cluster.ray_backend import ClusterError, TrainingFailed
    from launcher.run import run_from_file

    console = Console(highlight=False)
    try:
        run_from_file(config, set_ or [], address, console)
    except UserError as exc:
        fail(USER_ERROR_EXIT_CODE, *exc.messages)
    except ClusterError as exc:
        fail(USER_ERROR_EXIT_CODE, str(exc))
    except TrainingFailed as exc:
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
