"""`ftlaunch metrics RUN_DIR [--plot out.png]`: read a run's metrics.jsonl, print where it stands,
and draw loss, validation and throughput curves."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from launcher.errors import UserError
from trainer.formats.rundir import METRICS_FILE, STAGING_PREFIX


def find_metrics(run_dir: Path) -> Path:
    """`RUN_DIR/metrics.jsonl`, or the newest live one under `RUN_DIR/.run-*/` while it trains."""
    direct = run_dir / METRICS_FILE
    if direct.is_file():
        return direct
    live = sorted(
        run_dir.glob(f"{STAGING_PREFIX}*/{METRICS_FILE}"), key=lambda p: p.stat().st_mtime
    )
    if live:
        return live[-1]
    raise UserError(f"RUN_DIR: no metrics.jsonl in {run_dir} (nor a running .run-*/ inside it)")


def read_records(path: Path) -> list[dict[str, Any]]:
    records = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            raise UserError(f"{path}: line {number} is not JSON") from None
    return records


def overview_document(records: list[dict[str, Any]], path: Path) -> dict[str, Any]:
    """`metrics --json`: the same figures as the table, every key always present (null when the
    run has no such figure yet)."""
    train = [r for r in records if r.get("event") == "train"]
    evals = [r for r in records if r.get("event") == "eval"]
    timed = [r for r in train if "step_time_p99_s" in r]
    best = None
    if evals:
        key = "val_accuracy" if "val_accuracy" in evals[0] else "val_loss"
        pick = max if key == "val_accuracy" else min
        chosen = pick(evals, key=lambda r: r[key])
        best = {"metric": key, "value": chosen[key], "step": chosen["step"]}
    checkpoints = [r["tag"] for r in records if r.get("event") == "checkpoint"]
    return {
        "metrics_file": str(path),
        "last_step": train[-1]["step"] if train else None,
        "loss_first": train[0]["loss"] if train else None,
        "loss_last": train[-1]["loss"] if train else None,
        "samples_per_s": train[-1]["samples_per_s"] if train else None,
        "step_time_mean_s": sum(r["step_time_mean_s"] for r in timed) / len(timed)
        if timed
        else None,
        "step_time_p99_max_s": max(r["step_time_p99_s"] for r in timed) if timed else None,
        "stragglers": sorted({r["straggler"] for r in timed if r.get("straggler") is not None}),
        "best_validation": best,
        "evaluations": [{k: v for k, v in r.items() if k != "event"} for r in evals],
        "checkpoints": checkpoints,
    }


def overview(records: list[dict[str, Any]]) -> Table:
    train = [r for r in records if r.get("event") == "train"]
    evals = [r for r in records if r.get("event") == "eval"]
    table = Table(title="metrics", show_header=True)
    table.add_column("what")
    table.add_column("value", justify="right")
    if train:
        last = train[-1]
        table.add_row("last step", str(last["step"]))
        table.add_row("loss (first -> last)", f"{train[0]['loss']:.4f} -> {last['loss']:.4f}")
        table.add_row("samples/s (last)", f"{last['samples_per_s']:.1f}")
        timed = [r for r in train if "step_time_p99_s" in r]
        if timed:
            p99 = max(r["step_time_p99_s"] for r in timed)
            mean = sum(r["step_time_mean_s"] for r in timed) / len(timed)
            table.add_row("step time mean / worst p99", f"{mean:.3f} s / {p99:.3f} s")
            stragglers = sorted({r["straggler"] for r in timed if r.get("straggler") is not None})
            table.add_row("stragglers", ", ".join(f"rank {r}" for r in stragglers) or "none")
    if evals and "val_accuracy" in evals[0]:
        best = max(evals, key=lambda r: r["val_accuracy"])
        table.add_row("best val_accuracy", f"{best['val_accuracy']:.4f} (step {best['step']})")
    elif evals:  # causal-lm
        best = min(evals, key=lambda r: r["val_loss"])
        table.add_row("best val_loss", f"{best['val_loss']:.4f} (step {best['step']})")
    checkpoints = [r for r in records if r.get("event") == "checkpoint"]
    if checkpoints:
        table.add_row("checkpoints", f"{len(checkpoints)}, last {checkpoints[-1]['tag']}")
    return table


def plot(records: list[dict[str, Any]], out: Path) -> Path:
    """Draw the curves into `out` (PNG).

    Raises:
        UserError: matplotlib (the `plot` extra) is missing, or there is nothing to plot.
    """
    try:
        import matplotlib
    except ImportError:
        raise UserError("--plot: needs matplotlib (pip install 'ftlaunch[plot]')") from None

    matplotlib.use("Agg")  # files only; no display needed
    import matplotlib.pyplot as plt

    train = [r for r in records if r.get("event") == "train"]
    evals = [r for r in records if r.get("event") == "eval"]
    if not train:
        raise UserError("RUN_DIR: metrics.jsonl has no training steps to plot yet")
    figure, (loss_ax, eval_ax, speed_ax) = plt.subplots(3, 1, figsize=(8, 9), sharex=True)
    loss_ax.plot([r["step"] for r in train], [r["loss"] for r in train], label="train loss")
    if evals:
        loss_ax.plot(
            [r["step"] for r in evals], [r["val_loss"] for r in evals], "o-", label="val loss"
        )
        for key in ("val_accuracy", "val_macro_f1", "val_perplexity"):
            if key not in evals[0]:
                continue
            eval_ax.plot([r["step"] for r in evals], [r[key] for r in evals], "o-", label=key)
    speed_ax.plot(
        [r["step"] for r in train], [r["samples_per_s"] for r in train], label="samples/s"
    )
    for axis, title in ((loss_ax, "loss"), (eval_ax, "validation"), (speed_ax, "throughput")):
        axis.set_title(title)
        axis.grid(alpha=0.3)
        axis.legend(loc="best")
    speed_ax.set_xlabel("optimizer step")
    figure.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=100)
    plt.close(figure)
    return out


def run_metrics(
    run_dir: Path, plot_to: Path | None, console: Console, as_json: bool = False
) -> None:
    path = find_metrics(run_dir)
    records = read_records(path)
    if as_json:  # stdout carries only the document
        print(json.dumps(overview_document(records, path), indent=2, sort_keys=True))
        if plot_to is not None:
            plot(records, plot_to)
        return
    console.print(overview(records))
    if plot_to is not None:
        console.print(f"plot: {plot(records, plot_to)}")
