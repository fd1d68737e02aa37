"""`ftlaunch prepare`: the user-facing shell around `launcher.data.tokenize.prepare_into`."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from launcher.errors import UserError
from launcher.sizes import parse_size

if TYPE_CHECKING:
    from launcher.data.causal import CausalFormat

CAUSAL_FORMATS = ("text", "prompt-completion", "chat")


@dataclass(frozen=True)
class PrepareRequest:
    """What `ftlaunch prepare` was asked, option by option."""

    inputs: list[Path]
    tokenizer: str
    out: Path
    text_column: str = "text"
    label_column: str = "label"
    max_length: int = 128
    shard_size: str = "64MB"
    num_proc: int | None = None
    labels_from: Path | None = None
    split: str = "train"
    causal: CausalFormat | None = None  # None: sequence-classification


def run_prepare(request: PrepareRequest, console: Console) -> None:
    """Tokenize the inputs into `request.out`, unless it already holds this exact result.

    Raises:
        UserError: a bad option, model or input (one line each, naming it).
    """
    r = request
    num_proc, max_length, causal, out = r.num_proc, r.max_length, r.causal, r.out
    if num_proc is not None:
        if num_proc < 1:
            raise UserError(f"--num-proc: must be >= 1 (got {num_proc})")
        os.environ["RAYON_NUM_THREADS"] = str(num_proc)  # read by tokenizers when its pool starts
    if max_length < 1:
        raise UserError(f"--max-length: must be >= 1 (got {max_length})")
    from launcher.data.prepared import load_prepared
    from launcher.data.sources import SplitSource, collect_label_names
    from launcher.data.tokenize import TokenizeOptions, check_replaceable, prepare_into

    check_replaceable(out)  # before any work: --out is replaced as a whole
    from launcher.models import read_max_positions, resolve_model_path

    model_dir = resolve_model_path(r.tokenizer, field="--tokenizer")
    limit = read_max_positions(model_dir)
    if limit and max_length > limit:
        raise UserError(f"--max-length: {max_length} exceeds the model's position limit {limit}")
    source = SplitSource(
        "inputs",
        tuple(r.inputs),
        r.text_column,
        r.label_column,
        causal.columns() if causal else (),
    )
    if causal is not None:
        label_names: list[str] = []  # token labels are computed per row
    elif r.labels_from is not None:
        manifest = load_prepared("--labels-from", str(r.labels_from))
        if manifest is None:
            raise UserError(
                f"--labels-from: {r.labels_from} is not a prepared split (no manifest.json)"
            )
        label_names = manifest.label_names
    else:
        label_names = collect_label_names(source)
    options = TokenizeOptions(
        model_dir, max_length, label_names, parse_size(r.shard_size, "--shard-size"), causal=causal
    )
    with Progress(
        TextColumn("[bold]tokenizing"),
        BarColumn(),
        TextColumn("{task.completed:,} rows"),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    ) as progress:
        task = progress.add_task("rows", total=None)
        prepared = prepare_into(source, r.split, options, out, lambda n: progress.advance(task, n))
    m = prepared.manifest
    state = "up to date, nothing to do" if prepared.reused else "written"
    what = f"labels {m.label_names}"
    if causal is not None:
        efficiency = m.packing_efficiency()
        what = f"{m.examples:,} {causal.format} examples, {m.loss_tokens:,} scored tokens"
        what += f", packing efficiency {efficiency:.1%}" if efficiency else ""
    console.print(
        f"{out}: {m.total_rows:,} rows, {m.total_tokens:,} tokens in {len(m.shards)} shard(s), "
        f"{what} ({state})"
    )


def causal_options(
    fmt: str | None,
    packing: bool,
    text_column: str,
    prompt_column: str,
    completion_column: str,
    messages_column: str,
) -> CausalFormat | None:
    """The causal-LM layout the prepare flags ask for; None (classification) without --format.

    Raises:
        UserError: an unknown --format, or --packing without --format.
    """
    if fmt is None:
        if packing:
            raise UserError("--packing: needs --format (text, prompt-completion or chat)")
        return None
    if fmt not in CAUSAL_FORMATS:
        raise UserError(f"--format: must be one of {', '.join(CAUSAL_FORMATS)} (got {fmt!r})")
    from launcher.data.causal import CausalFormat

    return CausalFormat(
        fmt, packing, text_column, prompt_column, completion_column, messages_column
    )
