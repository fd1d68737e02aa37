"""The `ftlaunch` command line. Heavy imports (ray, pyarrow) happen inside commands, so
`ftlaunch --help` is instant and never imports torch."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from launcher.cli_infer import generate, predict
from launcher.cli_jobs import list_, logs, status, stop, submit
from launcher.cli_render import render
from launcher.cli_scale import scale_test
from launcher.cli_support import err_console, fail
from launcher.errors import (
    INTERRUPTED_EXIT_CODE,
    PREEMPTED_EXIT_CODE,
    TRAINING_FAILED_EXIT_CODE,
    USER_ERROR_EXIT_CODE,
    UserError,
)

app = typer.Typer(
    name="ftlaunch",
    help="Distributed fine-tuning launcher: one YAML, Ray-scheduled DeepSpeed workers.",
    no_args_is_help=True,
    add_completion=True,  # --install-completion / --show-completion (bash, zsh, fish)
    pretty_exceptions_enable=False,
)


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
    trust_checkpoint: Annotated[
        Path | None,
        typer.Option(
            "--trust-checkpoint",
            help="Resume from this checkpoint (output.dir/checkpoints/step-N) even though it is "
            "not signed for this output.dir (copied, moved, or another user's). Implies --resume.",
        ),
    ] = None,
    insecure: Annotated[
        bool,
        typer.Option(
            "--insecure",
            help="Allow a Ray without token authentication (RAY_AUTH_MODE, Ray < 2.52).",
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
        config=config,
        overrides=set_ or [],
        address=address,
        resume=resume,
        resume_fallback=resume_fallback,
        trust_checkpoint=trust_checkpoint,
        insecure=insecure,
        force=force,
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
        fail(PREEMPTED_EXIT_CODE, f"preempted ({exc.signal_name}): {saved}; continue with --resume")
    except TrainingFailed as exc:
        if exc.is_data_error:
            fail(USER_ERROR_EXIT_CODE, exc.message)
        fail(TRAINING_FAILED_EXIT_CODE, f"{exc} (earlier contents of output.dir are untouched)")
    except KeyboardInterrupt:  # a second Ctrl-C (or one before training began): stop at once
        fail(INTERRUPTED_EXIT_CODE, "interrupted: stopped at once, no checkpoint was taken")


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
    explain: Annotated[
        bool,
        typer.Option(
            "--explain", help="Print every key with where it came from (file, base, --set)."
        ),
    ] = False,
) -> None:
    """Check a job file (merged over its bases) and print the fully resolved config."""
    from launcher.config_bases import explain as explain_lines
    from launcher.config_loading import dump_job_config, load_job_config_explained

    try:
        job, origins = load_job_config_explained(config, set_ or [])
    except UserError as exc:
        fail(USER_ERROR_EXIT_CODE, *exc.messages)
    if explain:
        typer.echo("\n".join(explain_lines(job.model_dump(mode="json"), origins)))
    else:
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
    json_: Annotated[bool, typer.Option("--json", help="One JSON document on stdout.")] = False,
) -> None:
    """Show a run's metrics; --plot draws them with matplotlib."""
    from launcher.commands.metrics import run_metrics

    try:
        run_metrics(run_dir, plot, Console(highlight=False, soft_wrap=True), as_json=json_)
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
    overwrite: Annotated[
        bool,
        typer.Option("--overwrite", help="Write into --out even if it is not empty."),
    ] = False,
) -> None:
    """Consolidate a ZeRO checkpoint (PEFT adapter merged) into a plain safetensors model directory."""
    from launcher.commands.export import run_export

    try:
        code, message = run_export(run_dir, checkpoint, out, adapter_only, overwrite)
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
    sbatch_arg: Annotated[
        list[str] | None,
        typer.Option(
            "--sbatch-arg",
            help="Extra sbatch option, repeatable: --sbatch-arg=--qos=high --sbatch-arg=--mem=0.",
        ),
    ] = None,
    setup: Annotated[
        list[str] | None,
        typer.Option(
            help="Shell line run before Ray starts, repeatable: --setup 'module load cuda'."
        ),
    ] = None,
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
        sbatch_args=tuple(sbatch_arg or ()),
        setup=tuple(setup or ()),
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


# Registered in the order `--help` lists them.
app.command()(predict)
app.command()(generate)
app.command()(submit)
app.command()(status)
app.command()(logs)
app.command()(stop)
app.command("list")(list_)
app.command()(render)
app.command("scale-test")(scale_test)


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        err_console.print("interrupted")
        sys.exit(INTERRUPTED_EXIT_CODE)


if __name__ == "__main__":
    main()
