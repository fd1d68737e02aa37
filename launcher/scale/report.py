"""How a scaling test is shown: the terminal table, the JSON document (`scale.json`, `--json`)
and the plot."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.table import Table

from launcher.scale.figures import COMM_DEFINITION

SCALE_FILE = "scale.json"


def scale_document(
    rows: list[dict[str, Any]], unit: str, settings: dict[str, Any]
) -> dict[str, Any]:
    """`scale.json`: the settings of the test, what each figure means, one row per size."""
    return settings | {
        "unit": unit,
        "definitions": {
            "throughput_per_s": f"{unit} per second over the measured steps, all workers",
            "efficiency": "per-worker throughput / the smallest size's per-worker throughput",
            "first_step_s": "starting the cluster + launching this size on it -> end of step 1",
            "step_time": "the slowest rank's wall time of each optimizer step",
            "data_wait_share": "mean rank's seconds waiting for batches / step time",
            "comm_share": COMM_DEFINITION,
            "peak_memory_mb": "per rank: torch max allocated (gpu) or peak resident set (rss)",
        },
        "sizes": rows,
    }


def scale_table(document: dict[str, Any]) -> Table:
    """One line per size, the figures a reader compares across sizes."""
    unit = document["unit"]
    table = Table(title=f"scale-test ({document['mode']} scaling, {document['steps']} steps)")
    columns = ("workers", "global batch", f"{unit}/s", f"{unit}/s/worker", "efficiency")
    columns += ("first step", "step p50", "step p99", "data wait", "comm", "peak MB/rank")
    for column in columns:
        table.add_column(column, justify="right")
    for row in document["sizes"]:
        memory = "/".join(f"{mb:.0f}" for mb in row["peak_memory_mb"])
        table.add_row(
            str(row["workers"]),
            str(row["global_batch"]),
            f"{row['throughput_per_s']:,.1f}",
            f"{row['throughput_per_worker_per_s']:,.1f}",
            f"{row['efficiency']:.1%}",
            f"{row['first_step_s']:.1f}s",
            f"{row['step_time_p50_s'] * 1000:.0f}ms",
            f"{row['step_time_p99_s'] * 1000:.0f}ms",
            f"{row['data_wait_share']:.1%}",
            f"{row['comm_share']:.1%}",
            f"{memory} ({row['memory_kind']})",
        )
    return table


def write_plot(document: dict[str, Any], path: Path) -> None:
    """Per-worker throughput and efficiency against the worker count, one PNG/PDF/SVG (by the
    file's suffix)."""
    import matplotlib

    matplotlib.use("Agg")  # no display: a file is the only output
    import matplotlib.pyplot as plt

    rows = document["sizes"]
    workers = [row["workers"] for row in rows]
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    left.plot(workers, [row["throughput_per_worker_per_s"] for row in rows], marker="o")
    left.set(xlabel="workers", ylabel=f"{document['unit']}/s per worker", xticks=workers)
    left.set_ylim(bottom=0)
    right.plot(workers, [row["efficiency"] for row in rows], marker="o", label="measured")
    right.axhline(1.0, color="grey", linestyle="--", label="perfect")
    right.set(xlabel="workers", ylabel="scaling efficiency", xticks=workers)
    right.set_ylim(0, max(1.1, *(row["efficiency"] for row in rows)))
    right.legend()
    figure.suptitle(f"{document['config']}: {document['mode']} scaling")
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
