"""The `ftlaunch` command line. Heavy imports (ray, pyarrow) happen inside commands, so
`ftlaunch --help` is instant and never imports torch."""

from __future__ import annotations

import sys
from collections.abc import Callable
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
    resume_fallback: Annotated[
        bool,
        typer.Option(
            "--resume-fallback",
            help="Like --resume, but if the newest checkpoint fails verification, use the newest "
            "older one that passes (the corrupted one is kept, not deleted).",
        ),
    ] = False,
    force: Annotated[
        bool,
        typer.Option(
            "--force", help="Start even if `ftlaunch plan` says the ranks run out of memory."
        ),
    ] = False,
) -> None:
    """Fine-tune as the YAML says: plan, prepare data, start/reach Ray, train, bring results home."""
    from cluster.errors import ClusterError, Preempted, TrainingFailed
    from launcher.commands.run import RunRequest, run_from_file

    console = Console(highlight=False, soft_wrap=True)
    request = RunRequest(
        config, set_ or [], address, resume=resume, resume_fallback=resume_fallback, force=force
    )
    try:
        run_from_file(request, console)
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
def plan(
    config: Annotated[Path, typer.Argument(help="Job YAML file.")],
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="Override a key: --set engine.zero_stage=3")
    ] = None,
    gpu_memory: Annotated[
        str | None, typer.Option(help="Memory of one GPU, e.g. 80GB (default: this machine's).")
    ] = None,
    cpu_memory: Annotated[
        str | None, typer.Option(help="RAM of one node, e.g. 512GiB (default: the cluster's).")
    ] = None,
    address: Annotated[
        str | None, typer.Option(help="Plan against this Ray cluster (overrides cluster.address).")
    ] = None,
    mfu: Annotated[
        float, typer.Option(help="Model FLOPs utilisation for the throughput estimate.")
    ] = 0.4,
    peak_tflops: Annotated[
        float | None,
        typer.Option(help="Peak TFLOP/s of one worker (default: an H100, or a CPU core)."),
    ] = None,
    json_: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Memory per rank (weights, gradients, optimizer, activations, buffers), whether it fits,
    what to change if not, and the expected communication and throughput. Needs config.json only."""
    from cluster.errors import ClusterError
    from launcher.commands.plan import PlanOptions, run_plan
    from launcher.sizes import parse_size

    try:
        options = PlanOptions(
            gpu_memory=parse_size(gpu_memory, "--gpu-memory") if gpu_memory else None,
            cpu_memory=parse_size(cpu_memory, "--cpu-memory") if cpu_memory else None,
            mfu=_fraction(mfu, "--mfu"),
            peak_tflops=peak_tflops,
        )
        overrides = [*(set_ or []), *([f"cluster.address={address}"] if address else [])]
        run_plan(config, overrides, options, json_, typer.echo)
    except UserError as exc:
        fail(USER_ERROR_EXIT_CODE, *exc.messages)
    except ClusterError as exc:
        fail(USER_ERROR_EXIT_CODE, str(exc))


def _fraction(value: float, option: str) -> float:
    if not 0 < value <= 1:
        raise UserError(f"{option}: must be in (0, 1] (got {value:g})")
    return value


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
    format_: Annotated[
        str | None,
        typer.Option(
            "--format",
            help="Causal LM: text | prompt-completion | chat (masks stored in the shards); "
            "omit for sequence classification.",
        ),
    ] = None,
    packing: Annotated[
        bool, typer.Option(help="Causal LM: pack several examples into each max-length row.")
    ] = False,
    prompt_column: Annotated[str, typer.Option(help="Causal LM prompt column.")] = "prompt",
    completion_column: Annotated[
        str, typer.Option(help="Causal LM completion column.")
    ] = "completion",
    messages_column: Annotated[str, typer.Option(help="Causal LM chat column.")] = "messages",
) -> None:
    """Tokenize inputs into Arrow IPC shards + manifest.json (streamed, deterministic, idempotent)."""
    from launcher.commands.prepare import PrepareRequest, causal_options, run_prepare

    try:
        request = PrepareRequest(
            inputs=inputs,
            tokenizer=tokenizer,
            out=out,
            text_column=text_column,
            label_column=label_column,
            max_length=max_length,
            shard_size=shard_size,
            num_proc=num_proc,
            labels_from=labels_from,
            split=split,
            causal=causal_options(
                format_, packing, text_column, prompt_column, completion_column, messages_column
            ),
        )
        run_prepare(request, Console(highlight=False, soft_wrap=True))
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
    from launcher.commands.metrics import run_metrics

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
    from launcher.commands.export import run_export

    try:
        code, message = run_export(run_dir, checkpoint, out, adapter_only)
    except UserError as exc:
        fail(USER_ERROR_EXIT_CODE, *exc.messages)
    if code:
        fail(code, message)
    typer.echo(message)


@app.command()
def slurm(
    config: Annotated[Path, typer.Argument(help="Job YAML file.")],
    nodes: Annotated[int, typer.Option(help="Nodes to allocate; one Ray node on each.")],
    gpus_per_node: Annotated[
        int | None, typer.Option(help="GPUs per node (default: what the workers need).")
    ] = None,
    cpus_per_node: Annotated[
        int | None, typer.Option(help="CPUs per node (default: what the workers need).")
    ] = None,
    partition: Annotated[str | None, typer.Option(help="SLURM partition.")] = None,
    time: Annotated[str | None, typer.Option(help="Time limit, e.g. 30 or 2:00:00.")] = None,
    account: Annotated[str | None, typer.Option(help="SLURM account.")] = None,
    requeue: Annotated[
        bool, typer.Option("--requeue", help="Checkpoint at the time limit and requeue; resume.")
    ] = False,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue from the newest checkpoint in output.dir.")
    ] = False,
    join_timeout: Annotated[
        int, typer.Option(help="Seconds to wait for every Ray node to join.")
    ] = 300,
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="Override a key: --set optim.lr=1e-4")
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print the sbatch script; submit nothing.")
    ] = False,
) -> None:
    """Run the job in a SLURM allocation: sbatch boots Ray on the nodes, then `ftlaunch run`."""
    from launcher.commands.slurm import submit_from_file
    from launcher.slurm.options import SlurmOptions

    options = SlurmOptions(
        nodes=nodes,
        gpus_per_node=gpus_per_node,
        cpus_per_node=cpus_per_node,
        partition=partition,
        time=time,
        account=account,
        requeue=requeue,
        resume=resume,
        join_timeout_s=join_timeout,
    )
    try:
        submit_from_file(
            config, set_ or [], options, dry_run, Console(highlight=False, soft_wrap=True)
        )
    except UserError as exc:
        fail(USER_ERROR_EXIT_CODE, *exc.messages)


@app.command("demo-data")
def demo_data(
    out: Annotated[Path, typer.Option(help="Directory for train/validation/test JSONL.")] = Path(
        "data/demo"
    ),
    seed: Annotated[int, typer.Option(help="Generator seed.")] = 0,
) -> None:
    """Write the demo's generated 3-class review dataset (deterministic)."""
    from launcher.data.demo import write_demo_dataset

    for split, path in write_demo_dataset(out, seed=seed).items():
        typer.echo(f"{split}: {path}")


@app.command()
def models() -> None:
    """List the model aliases usable in model.path."""
    from launcher.models import MODEL_ALIASES

    for alias, (package, _) in MODEL_ALIASES.items():
        typer.echo(f"{alias}\t(pip package {package.replace('_', '-')})")


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


@app.command()
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


@app.command()
def status(
    job: Annotated[str, typer.Argument(help="Ray job id, or a SLURM job id (all digits).")],
    address: AddressOption = None,
) -> None:
    """Show a job's state."""
    from launcher.commands.jobs import show_status

    _jobs_call(lambda: show_status(job, address, typer.echo))


@app.command()
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


@app.command()
def stop(
    job: Annotated[str, typer.Argument(help="Ray job id, or a SLURM job id (all digits).")],
    address: AddressOption = None,
) -> None:
    """Stop a job (SIGTERM: it commits a preemption checkpoint; continue with --resume)."""
    from launcher.commands.jobs import stop_job

    _jobs_call(lambda: stop_job(job, address, typer.echo))


@app.command("list")
def list_(address: AddressOption = None) -> None:
    """List the jobs ftlaunch submitted to the cluster: id, status, start, name."""
    from launcher.commands.jobs import list_jobs

    _jobs_call(lambda: list_jobs(address, typer.echo))


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        err_console.print("interrupted")
        sys.exit(130)


if __name__ == "__main__":
    main()
