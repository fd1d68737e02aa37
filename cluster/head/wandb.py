"""Mirror the run's metrics stream into Weights & Biases (when `output.wandb_project` is set),
from the head, like MLflow (cluster/head/mlflow.py): workers never talk to W&B.

The API key is a secret: it reaches the head's collector only through `cluster.secret_env`
(the job config refuses online mode without WANDB_API_KEY listed there), sealed like every other
secret; the collector unseals it into its own environment just before `wandb.init`. Offline mode
needs no key: the run is written under the run directory (`wandb/offline-run-*`), committed with
the rest of output.dir, and uploaded later with `wandb sync`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cluster.auth.secrets import unseal_into_environ
from cluster.auth.token import load_token
from cluster.head.mlflow import numeric_fields
from trainer.config.schema import WANDB_KEY, JobConfig

# W&B's exit codes: 0 finished, non-zero failed; a preempted run is resumable, not failed, but
# W&B has no such state, so it is marked failed with the preemption in its summary.
EXIT_CODES = {"FINISHED": 0, "FAILED": 1, "KILLED": 1}


class WandbUnavailable(Exception):
    """wandb is missing or cannot start; the message names the field and says why."""


@dataclass(frozen=True)
class WandbTarget:
    """Where and how to log: decided by the launcher from the job, used by the collector."""

    project: str
    mode: str  # online | offline
    run_name: str
    config: dict[str, Any] = field(default_factory=dict)


def wandb_target(job: JobConfig, run_id: str) -> WandbTarget | None:
    """The W&B run this job asks for, or None (checks that wandb is importable, so a missing
    extra costs seconds, not a run).

    Raises:
        WandbUnavailable: output.wandb_project is set but wandb is not installed.
    """
    o = job.output
    if o.wandb_project is None:
        return None
    try:
        import wandb  # noqa: F401  (only checked here; the collector imports it)
    except ImportError as exc:
        raise WandbUnavailable(
            "output.wandb_project: wandb is not installed (pip install 'ftlaunch[wandb]')"
        ) from exc
    return WandbTarget(o.wandb_project, o.wandb_mode, run_id, job.model_dump(mode="json"))


class WandbLogger:
    """One W&B run for one ftlaunch run: train/eval metrics by optimizer step, the summary's
    test metrics at the end, and the exit state."""

    def __init__(self, target: WandbTarget, run_dir: Path) -> None:
        import wandb

        if target.mode == "online" and WANDB_KEY not in os.environ:
            unseal_into_environ(
                load_token()
            )  # listed in cluster.secret_env (checked by the config)
        self.run = wandb.init(
            project=target.project,
            name=target.run_name,
            dir=str(run_dir),
            mode=target.mode,  # pyright: ignore[reportArgumentType] (a validated literal)
            config=target.config,
            settings=wandb.Settings(console="off", silent=True, x_disable_stats=True),
        )

    def log(self, record: dict[str, Any]) -> None:
        event = record.get("event")
        if event in ("train", "eval") and "step" in record:
            self.run.log(numeric_fields(record, event), step=int(record["step"]))
        elif event == "summary":
            test = {f"test_{k}": v for k, v in record.get("test", {}).items()}
            self.run.summary.update(numeric_fields(test, "summary"))

    def finish(self, status: str) -> None:
        if status == "KILLED":
            self.run.summary["preempted"] = True
        self.run.finish(exit_code=EXIT_CODES.get(status, 1))
