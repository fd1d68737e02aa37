"""The terminal view of a run: a live progress bar while training, a summary table at the end."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table


class RunDisplay:
    """Fed the records workers reported, a few times a second; keeps the newest of each kind."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.latest: dict[str, dict[str, Any]] = {}
        self._progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            TextColumn("step {task.completed}/{task.total}"),
            TextColumn("{task.fields[stats]}"),
            TimeElapsedColumn(),
            console=console,
            transient=False,
        )
        self._task = self._progress.add_task("starting workers", total=None, stats="")
        self._warned_stragglers: set[int] = set()

    def __enter__(self) -> RunDisplay:
        self._progress.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._progress.stop()

    def update(self, records: list[dict[str, Any]]) -> None:
        """Take the records reported since the last call, in order."""
        for record in records:
            event = record.get("event", "train")
            self.latest[event] = record
            if event == "start":
                self._progress.update(
                    self._task, total=record["total_steps"], description="training"
                )
                if "trainable_params" in record:
                    self._progress.console.print(trainable_line(record))
            elif event == "eval":
                values = "  ".join(
                    f"{k} {v:.4f}" for k, v in record.items() if k.startswith("val_")
                )  # accuracy/F1 for classification, perplexity for causal-lm
                self._progress.console.print(f"eval @ step {record['step']}: {values}")
            elif event == "train" and record.get("straggler") is not None:
                self._warn_straggler(record)
            elif event == "placement":
                self._progress.console.print(record["message"], markup=False)
            elif event in ("stalled", "commit_failed", "warning"):
                self._progress.console.print(alert_line(record), markup=False)
        train = self.latest.get("train")
        if train:
            stats = self._stats(train, self.latest.get("eval"))
            self._progress.update(self._task, completed=train["step"], stats=stats)

    def _warn_straggler(self, record: dict[str, Any]) -> None:
        """Once per straggling rank: which rank, and how much slower than the others."""
        rank = record["straggler"]
        if rank in self._warned_stragglers:
            return
        self._warned_stragglers.add(rank)
        busy = record.get("rank_busy_s") or []
        detail = f" (busy {busy[rank]:.2f}s vs {min(busy):.2f}s per window)" if busy else ""
        self._progress.console.print(
            f"warning: rank {rank} is a straggler{detail}; every rank waits for it"
        )

    @staticmethod
    def _stats(train: dict[str, Any], evaluation: dict[str, Any] | None) -> str:
        text = f"loss {train['loss']:.4f}  {train['samples_per_s']:.1f} samples/s  {train['tokens_per_s']:.0f} tok/s"
        if "step_time_p99_s" in train:
            text += f"  step {train['step_time_mean_s']:.2f}s (p99 {train['step_time_p99_s']:.2f}s)"
        if evaluation and "val_accuracy" in evaluation:
            text += f"  val_acc {evaluation['val_accuracy']:.4f}"
        elif evaluation and "val_perplexity" in evaluation:
            text += f"  val_ppl {evaluation['val_perplexity']:.2f}"
        return text


def trainable_line(facts: dict[str, Any]) -> str:
    fraction = facts["trainable_params"] / max(facts["total_params"], 1)
    return (
        f"trainable parameters: {facts['trainable_params']:,} of {facts['total_params']:,} "
        f"({100 * fraction:.3g}%, peft.method {facts.get('peft_method', 'none')})"
    )


def summary_table(summary: dict[str, Any]) -> Table:
    table = Table(title="ftlaunch run summary", show_header=True)
    table.add_column("metric")
    table.add_column("value", justify="right")
    test, best = summary["test"], summary["best_validation"]
    if summary.get("task") == "causal-lm":
        efficiency = summary.get("packing_efficiency")
        rows = [
            ("test loss / perplexity", f"{test['loss']:.4f} / {test['perplexity']:.2f}"),
            ("best val loss", f"{best['val_loss']:.4f} (step {best['step']})"),
            ("packing efficiency", f"{efficiency:.1%}" if efficiency else "not packed"),
        ]
    else:
        # Only the metrics chosen in training.metrics are in the summary.
        names = {"accuracy": "accuracy", "macro_f1": "macro F1", "micro_f1": "micro F1"}
        rows = [
            (f"test {label}", f"{test[key]:.4f}") for key, label in names.items() if key in test
        ]
        rows.append(("majority baseline accuracy", f"{summary['majority_baseline_accuracy']:.4f}"))
        rows += [
            (f"best val {label}", f"{best[f'val_{key}']:.4f} (step {best['step']})")
            for key, label in names.items()
            if f"val_{key}" in best
        ][:1]
    rows += [
        ("optimizer steps", str(summary["steps"])),
        ("stopped early", str(summary["stopped_early"])),
        ("workers x ZeRO stage", f"{summary['world_size']} x {summary['zero_stage']}"),
        ("trainable params", f"{summary['trainable_params']:,} / {summary['total_params']:,}"),
        ("wall time", f"{summary['wall_s']:.1f} s"),
    ]
    for name, value in rows:
        table.add_row(name, value)
    return table


def alert_line(record: dict[str, Any]) -> str:
    """What the head reported going wrong, as one line: a stalled rank (restarted within
    training.max_failures), a checkpoint that could not be committed, an MLflow outage."""
    event = record["event"]
    if event == "stalled":
        return f"stalled: {record['message']}"
    if event == "commit_failed":
        return f"commit failed: checkpoint {record['tag']} was not committed: {record['error']}"
    return f"warning: {record['message']}"
