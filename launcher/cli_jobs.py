"""The job commands: `ftlaunch submit`, `status`, `logs`, `stop`, `list` (Ray Jobs API, or SLURM
for all-digit ids). Registered on the app by launcher/cli.py; `status`, `logs`, `stop` and `list`
import neither torch nor Ray (fresh-interpreter tests check it)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer

from launcher.cli_support import err_console, fail
from launcher.errors import USER_ERROR_EXIT_CODE, UserError

AddressOption = Annotated[
    str | None,
    typer.Option(
        help="Ray Jobs API, e.g. http://HEAD:8265 (default: cluster.address, RAY_ADDRESS)."
    ),
]


def _jobs_call(action: Callable[[], int]) -> None:
    """Run a Jobs API command: user and cluster errors are one line and exit code 2."""
    from cluster.errors import ClusterError

    try:
        code = action()
    except UserError as exc:
        fail(USER_ERROR_EXIT_CODE, *exc.messages)
    except ClusterError as exc:
        fail(USER_ERROR_EXIT_CODE, str(exc))
    raise typer.Exit(code)


def _note(text: str) -> None:
    err_console.print(text, markup=False)


def submit(
    config: Annotated[Path, typer.Argument(help="Job YAML file.")],
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="Override a key: --set optim.lr=1e-4")
    ] = None,
    address: AddressOption = None,
    follow: Annotated[
        bool, typer.Option("--follow", help="Stream the logs; exit with the job's status.")
    ] = False,
    insecure: Annotated[
        bool, typer.Option("--insecure", help="Allow a cluster without token authentication.")
    ] = False,
    max_upload: Annotated[
        str, typer.Option(help="Local inputs up to this total size are uploaded with the job.")
    ] = "100MB",
    requirements: Annotated[
        Path | None, typer.Option(help="requirements.txt installed for the job by Ray (pip).")
    ] = None,
) -> None:
    """Submit the job to a Ray cluster through the Ray Jobs API; prints the job id."""
    from launcher.commands.submit import SubmitRequest, run_submit
    from launcher.sizes import parse_size
    from launcher.submit_plan import MAX_UPLOAD_LIMIT, read_requirements

    def action() -> int:
        request = SubmitRequest(
            config=config,
            overrides=set_ or [],
            address=address,
            follow=follow,
            insecure=insecure,
            max_upload=parse_size(max_upload, "--max-upload", minimum=0, maximum=MAX_UPLOAD_LIMIT),
            requirements=read_requirements(requirements) if requirements else [],
        )
        return run_submit(request, typer.echo, _note)

    _jobs_call(action)


JsonOption = Annotated[
    bool, typer.Option("--json", help="One JSON document on stdout (stable keys).")
]


def status(
    job: Annotated[str, typer.Argument(help="Ray job id, or a SLURM job id (all digits).")],
    address: AddressOption = None,
    json_: JsonOption = False,
) -> None:
    """Show a job's state."""
    from launcher.commands.jobs import show_status

    _jobs_call(lambda: show_status(job, address, typer.echo, as_json=json_))


def logs(
    job: Annotated[str, typer.Argument(help="Ray job id, or a SLURM job id (all digits).")],
    address: AddressOption = None,
    follow: Annotated[
        bool, typer.Option("--follow", help="Keep streaming; exit with the job's status.")
    ] = False,
) -> None:
    """Print a job's logs (secret values masked)."""
    from launcher.commands.jobs import show_logs

    _jobs_call(lambda: show_logs(job, address, follow, typer.echo, _note))


def stop(
    job: Annotated[str, typer.Argument(help="Ray job id, or a SLURM job id (all digits).")],
    address: AddressOption = None,
) -> None:
    """Stop a job (SIGTERM: it commits a preemption checkpoint; continue with --resume)."""
    from launcher.commands.jobs import stop_job

    _jobs_call(lambda: stop_job(job, address, typer.echo))


def list_(address: AddressOption = None, json_: JsonOption = False) -> None:
    """List the jobs ftlaunch submitted to the cluster: id, status, start, name."""
    from launcher.commands.jobs import list_jobs

    _jobs_call(lambda: list_jobs(address, typer.echo, as_json=json_))
