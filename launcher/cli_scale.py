"""`ftlaunch scale-test`: its options and exit codes (the work is in launcher/commands/)."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from launcher.cli_support import fail
from launcher.errors import (
    INTERRUPTED_EXIT_CODE,
    TRAINING_FAILED_EXIT_CODE,
    USER_ERROR_EXIT_CODE,
    UserError,
)


def scale_test(
    config: Annotated[Path, typer.Argument(help="Job YAML file.")],
    workers: Annotated[
        str, typer.Option(help="Worker counts to run, increasing: 1,2,4 (the first is the base).")
    ],
    steps: Annotated[int, typer.Option(help="Optimizer steps at each size.")] = 20,
    warmup: Annotated[
        int, typer.Option(help="First steps of each size left out of the figures.")
    ] = 1,
    mode: Annotated[
        str,
        typer.Option(
            help="weak: each worker's batch fixed; strong: the job's global batch fixed "
            "(grad_accum, then micro_batch_size, adjusted per size)."
        ),
    ] = "weak",
    out: Annotated[
        Path | None,
        typer.Option(help="New directory for the test (default: beside output.dir, time-stamped)."),
    ] = None,
    plot: Annotated[
        Path | None, typer.Option(help="Write a plot (png, pdf, svg) of throughput and efficiency.")
    ] = None,
    json_: Annotated[
        bool, typer.Option("--json", help="Print scale.json to stdout (progress to stderr).")
    ] = False,
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="Override a key for every size.")
    ] = None,
    address: Annotated[
        str | None, typer.Option(help="Existing Ray cluster (overrides cluster.address).")
    ] = None,
    insecure: Annotated[
        bool, typer.Option("--insecure", help="Allow a Ray without token authentication.")
    ] = False,
    force: Annotated[
        bool, typer.Option("--force", help="Run sizes the memory plan says do not fit.")
    ] = False,
) -> None:
    """The job at several worker counts on one cluster: throughput, scaling efficiency, time to
    first step, step-time percentiles, data-wait and communication shares, peak memory per rank;
    a table, DIR/scale.json and an optional plot. Each size runs in its own output.dir under DIR."""
    from cluster.errors import ClusterError, Preempted, TrainingFailed
    from launcher.commands.scale_test import ScaleRequest
    from launcher.commands.scale_test import scale_test as run_scale_test
    from launcher.scale.report import scale_table
    from launcher.scale.sizes import parse_mode, parse_workers

    started = time.time()
    console = Console(highlight=False, soft_wrap=True, stderr=json_)
    try:
        request = ScaleRequest(
            config=config,
            workers=parse_workers(workers),
            steps=steps,
            warmup=warmup,
            mode=parse_mode(mode),
            out=out,
            plot=plot,
            overrides=set_ or [],
            address=address,
            insecure=insecure,
            force=force,
        )
        document = run_scale_test(request, console, started)
    except UserError as exc:
        fail(USER_ERROR_EXIT_CODE, *exc.messages)
    except ClusterError as exc:
        fail(USER_ERROR_EXIT_CODE, str(exc))
    except TrainingFailed as exc:
        fail(USER_ERROR_EXIT_CODE if exc.is_data_error else TRAINING_FAILED_EXIT_CODE, str(exc))
    except (Preempted, KeyboardInterrupt):
        fail(INTERRUPTED_EXIT_CODE, "interrupted: the scale test stopped; finished sizes are kept")
    # A file or a pipe gets the whole table (rich would squeeze it to 80 columns).
    wide = console if console.is_terminal else Console(highlight=False, stderr=json_, width=200)
    wide.print(scale_table(document))
    console.print(f"results: {Path(document['directory']) / 'scale.json'}")
    if json_:
        sys.stdout.write(json.dumps(document, indent=2) + "\n")
