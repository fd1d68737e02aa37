"""Run a job on Ray: an embedded local cluster by default, or an existing one by address.

Ray Train's TorchTrainer owns the worker group and the torch process group; we add token auth,
a fail-fast placement check, the head-side collector with its heartbeat watchdog, a progress
feed for the terminal, and a reaper that takes the embedded Ray down with the launcher.

Closed by default: the running Ray must have token authentication and RAY_AUTH_MODE must be
`token`, unless the user passes --insecure (cluster/auth/mode.py; the launcher checks it before
anything is written, the backend again before it starts or joins a cluster). The embedded
cluster listens on loopback only, in a private temp dir (cluster/ray/embedded.py).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ray
from ray.exceptions import GetTimeoutError, RayError

from cluster.actors import ActorHandle, get
from cluster.auth.mode import check_closed
from cluster.auth.secrets import sealed_env_vars
from cluster.auth.token import load_token, write_token_file
from cluster.errors import ClusterError, Preempted, TrainingFailed
from cluster.head.collector import Liveness, collector_actor
from cluster.head.metrics_log import Trackers
from cluster.head.mlflow import MlflowUnavailable, start_mlflow_run
from cluster.head.model_server import model_server_actor
from cluster.head.shard_server import shard_server_actor
from cluster.head.wandb import WandbTarget, WandbUnavailable, wandb_target
from cluster.placement.plan import (
    PlacementError,
    PlacementPlan,
    placement_plan,
    placement_problem_now,
    scale_up_plan,
)
from cluster.placement.reserve import live_nodes, reserve_or_fail, wait_for_nodes
from cluster.ray.autoscaler import autoscaler_node_types
from cluster.ray.embedded import EmbeddedCluster, launch_embedded, local_only_driver
from cluster.ray.lean_train import lean_torch_trainer
from cluster.ray.reaper import MARKER_ENV
from cluster.worker.entry import INPUT_ERRORS, train_worker
from cluster.worker.node_agent import start_node_agent
from trainer.config.cluster import ClusterConfig
from trainer.config.spec import RunSpec
from trainer.formats.rundir import STACKS_DIR, TOKEN_FILE
from trainer.formats.signing import CheckpointSigning

POLL_INTERVAL_S = 0.5
FINAL_POLL_TIMEOUT_S = 60.0
WORKER_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
# glibc raises its mmap threshold whenever a large block is freed, and blocks below the threshold
# come from the heap, which is not given back: a CPU worker's resident memory then keeps the
# high-water mark of loading and of the first step on top of what it holds (about 7 bytes per
# parameter more, measured). A fixed threshold makes freed tensors go back to the system.
CPU_WORKER_ENV = {"MALLOC_MMAP_THRESHOLD_": "131072"}


class RayBackend:
    """Context manager: `with RayBackend(cfg) as backend: backend.run(spec, run_dir, on_progress)`."""

    name = "ray"

    def __init__(
        self,
        cluster: ClusterConfig,
        token_dir: Path | None = None,
        insecure: bool = False,
        embedded: EmbeddedCluster | None = None,
    ) -> None:
        """`embedded`: the cluster's embedded Ray when the launcher launched it early
        (`launch_embedded`); else it is started here."""
        self.cluster = cluster
        self.token_dir = token_dir  # where an embedded cluster's fresh token is written (0600)
        self.insecure = insecure
        self._embedded = embedded
        self._local_only = contextlib.ExitStack()

    def __enter__(self) -> RayBackend:
        check_closed(ray.__version__, os.environ, self.insecure)
        try:
            if self.cluster.address:
                self._connect(self.cluster.address)
            else:
                self._start_embedded()
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        if ray.is_initialized():
            ray.shutdown()
        if self._embedded is not None:
            self._embedded.stop()
            self._embedded = None
        self._local_only.close()
        os.environ.pop(MARKER_ENV, None)

    def _start_embedded(self) -> None:
        if self._embedded is None:  # not launched early by the launcher
            self._embedded = launch_embedded(self.cluster)
        if self._embedded.fresh_token and self.token_dir is not None:
            # so the user can reach this run's cluster/dashboard
            write_token_file(self.token_dir / TOKEN_FILE, self._embedded.token)
        address = self._embedded.wait_ready()
        self._local_only.enter_context(local_only_driver())
        self._connect(address)

    def _connect(self, address: str) -> None:
        try:
            ray.init(
                address=address,
                log_to_driver=False,
                logging_level=logging.ERROR,
                runtime_env={"env_vars": self._worker_env()},
            )
        except Exception as exc:  # Ray raises ConnectionError, RuntimeError or its own types here
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ClusterError(
                f"cluster.address: cannot connect to Ray at {address}: {first}"
            ) from None

    def check_placement(
        self, cluster: ClusterConfig | None = None, say: Callable[[str], None] = lambda _: None
    ) -> PlacementPlan:
        """Raise ClusterError now if the workers could never be placed, instead of waiting forever,
        or if they are not placed within cluster.placement_timeout_s; else say how to place them.
        When the live nodes are too few and the cluster autoscales, first wait (within the same
        timeout) for the nodes its autoscaler must add, reporting progress through `say`.
        `cluster`: another job's section on this backend's cluster (scale-test sizes)."""
        cluster = cluster or self.cluster
        timeout_s = cluster.placement_timeout_s
        try:
            nodes = live_nodes()
            if placement_problem_now(cluster, nodes) and self._embedded is None:
                scale = scale_up_plan(cluster, nodes, autoscaler_node_types())
                if scale.total():
                    timeout_s -= wait_for_nodes(scale, timeout_s, say)
                    nodes = live_nodes()
            plan = placement_plan(cluster, nodes)
            reserve_or_fail(plan, max(timeout_s, 1.0))
        except PlacementError as exc:
            raise ClusterError(str(exc)) from None
        return plan

    def _worker_env(self) -> dict[str, str]:
        """Offline flags, the job's plain `cluster.env` (which may override them, e.g. HF_HOME)
        and this process's secrets, sealed (see cluster/auth/secrets.py)."""
        sealed = sealed_env_vars(os.environ, self.cluster.secret_env, load_token())
        cpu = {} if self.cluster.uses_gpu() else CPU_WORKER_ENV
        return WORKER_ENV | cpu | self.cluster.env | sealed

    def run(
        self,
        spec: RunSpec,
        run_dir: Path,
        checkpoint_dir: Path,
        on_progress: Callable[[list[dict[str, Any]]], None],
        signing: CheckpointSigning | None = None,
    ) -> dict[str, Any]:
        """Train on the cluster; results land in `run_dir` through the collector, which signs
        each checkpoint it commits and checks each it resumes from with `signing`. Returns
        head-side statistics (shards and model bytes streamed from the head) for the summary.

        Raises:
            ClusterError: the request cannot be placed.
            TrainingFailed: a worker raised; carries the failing rank and its error line.
        """
        from ray.train import FailureConfig, RunConfig, ScalingConfig

        from cluster.ray.process_group import BoundStoreTorchConfig

        plan = self.check_placement(
            spec.job.cluster, lambda line: on_progress([{"event": "placement", "message": line}])
        )
        t = spec.job.training
        liveness = Liveness(
            t.heartbeat_timeout_s,
            t.stall_timeout_s,
            str(checkpoint_dir.parent / STACKS_DIR),
            start_agent=start_node_agent,
        )
        trackers = Trackers(_mlflow_run(spec), _wandb_target(spec))
        collector = collector_actor(
            run_dir,
            spec.job.output.checkpoint_uri or checkpoint_dir,
            spec.job.output.keep_last,
            trackers,
            signing,
            liveness,
        )
        shard_server = shard_server_actor(list(spec.split_dirs.values()))
        model_server = model_server_actor(spec.model_dir)
        trainer = lean_torch_trainer(embedded=self._embedded is not None)(
            train_worker,
            train_loop_config={
                "spec": spec.model_dump(mode="json"),
                "collector": collector,
                "shard_server": shard_server,
                "model_server": model_server,
                "head_node_id": ray.get_runtime_context().get_node_id(),
            },
            torch_config=BoundStoreTorchConfig(
                backend=plan.process_group_backend(), timeout_s=int(t.collective_timeout_s)
            ),
            scaling_config=ScalingConfig(**plan.scaling_kwargs()),
            run_config=RunConfig(
                name=spec.run_id,
                storage_path=str(run_dir / "ray_train"),
                failure_config=FailureConfig(max_failures=spec.job.training.max_failures),
            ),
        )
        outcome: dict[str, BaseException] = {}
        thread = threading.Thread(target=_fit_into, args=(trainer, outcome), daemon=True)
        thread.start()
        stop = _StopOnSigterm(collector, spec.job.training.preemption_grace_s)
        ranks: dict[int, dict[str, Any]] = {}  # where each rank runs (newest attempt)
        feed = _Feed(collector)
        with stop:
            while thread.is_alive() and not stop.grace_exceeded():
                thread.join(POLL_INTERVAL_S)
                on_progress(_note_ranks(feed.poll(), ranks))
        for _ in range(2):  # what a timed-out drain held, then what came after it
            on_progress(_note_ranks(feed.poll(FINAL_POLL_TIMEOUT_S), ranks))
        if stop.requested_at is not None:
            get(collector.close.remote("KILLED"), timeout=60)
            tag = get(collector.preempted_tag.remote(), timeout=10)
            raise Preempted(committed=tag, signal_name=stop.signal_name)
        head = get(collector.outcome.remote(), timeout=30)
        failed = "error" in outcome or head["commit_failures"] or head["input_error"]
        get(collector.close.remote("FAILED" if failed else "FINISHED"), timeout=60)
        if failed:
            raise _as_training_failed(outcome.get("error"), head)
        restarts = max(get(collector.starts_seen.remote()) - 1, 0)
        placement = [ranks[rank] for rank in sorted(ranks)]
        streamed = get(shard_server.stats.remote(), timeout=30)
        streamed |= get(model_server.stats.remote(), timeout=30)
        return streamed | {"restarts": restarts, "placement": placement}


class _StopOnSigterm:
    """While active, SIGTERM or a Ctrl-C (SIGINT) asks the workers (through the collector) to
    checkpoint and stop, and starts the grace period after which the launcher stops waiting for
    them. A second Ctrl-C stops at once (KeyboardInterrupt: Ray is shut down, exit 130)."""

    def __init__(self, collector: ActorHandle, grace_s: float) -> None:
        self._collector = collector
        self._grace_s = grace_s
        self.requested_at: float | None = None
        self.signal_name = "SIGTERM"
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> _StopOnSigterm:
        for signum in (signal.SIGTERM, signal.SIGINT):
            self._previous[signum] = signal.signal(signum, self._on_signal)
        return self

    def __exit__(self, *exc_info: object) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)

    def _on_signal(self, signum: int, frame: Any) -> None:
        if self.requested_at is not None:
            if signum == signal.SIGINT:
                raise KeyboardInterrupt
            return
        self.requested_at = time.monotonic()
        self.signal_name = signal.Signals(signum).name
        self._collector.request_stop.remote()

    def grace_exceeded(self) -> bool:
        return (
            self.requested_at is not None and time.monotonic() - self.requested_at > self._grace_s
        )


def _mlflow_run(spec: RunSpec) -> tuple[str, str] | None:
    """Start the MLflow run before any worker does, so a bad URI costs seconds, not a run."""
    output = spec.job.output
    if output.mlflow_uri is None:
        return None
    try:
        run_id = start_mlflow_run(
            output.mlflow_uri,
            output.mlflow_experiment or spec.job.name,
            spec.run_id,
            spec.job.model_dump(mode="json"),
        )
    except MlflowUnavailable as exc:
        raise ClusterError(str(exc)) from exc
    return output.mlflow_uri, run_id


def _wandb_target(spec: RunSpec) -> WandbTarget | None:
    try:
        return wandb_target(spec.job, spec.run_id)
    except WandbUnavailable as exc:
        raise ClusterError(str(exc)) from exc


def _fit_into(trainer: Any, outcome: dict[str, BaseException]) -> None:
    try:
        trainer.fit()
    except BaseException as exc:  # handed to the main thread, which reports it
        outcome["error"] = exc


def _note_ranks(
    records: list[dict[str, Any]], ranks: dict[int, dict[str, Any]]
) -> list[dict[str, Any]]:
    for record in records:
        if record.get("event") == "rank_start":
            ranks[record["rank"]] = {
                k: record[k] for k in ("rank", "node_id", "hostname") if k in record
            }
    return records


class _Feed:
    """The collector's records for the terminal. A drain that does not answer within the poll's
    timeout is awaited again by the next poll instead of being dropped: the actor has already
    handed those records over (on a loaded head the last drain holds the run's summary)."""

    def __init__(self, collector: ActorHandle) -> None:
        self._collector = collector
        self._pending: Any = None

    def poll(self, timeout_s: float = 5.0) -> list[dict[str, Any]]:
        if self._pending is None:
            self._pending = self._collector.drain.remote()
        try:
            records = get(self._pending, timeout=timeout_s)
        except GetTimeoutError:
            return []
        except RayError:  # gone: the fit thread reports what went wrong
            records = []
        self._pending = None
        return records


def _as_training_failed(error: BaseException | None, head: dict[str, Any]) -> TrainingFailed:
    """The one reason to give: a stall the watchdog named in the last attempt, else a checkpoint
    the head could not commit, else the first failing rank's error."""
    if head.get("input_error"):  # reported by the rank itself, before Ray Train's restart
        refused = head["input_error"]
        return TrainingFailed(refused["rank"], refused["error"], is_data_error=True)
    failures = getattr(error, "worker_failures", None) or {}
    for rank, failure in sorted(failures.items()):
        cause = _root_cause(failure)
        # Bad input rather than a failed run (exit 2): a shard or checkpoint that fails its
        # checks (an unsafe pickle included), or a config this worker cannot run.
        if isinstance(cause, INPUT_ERRORS):
            return TrainingFailed(rank, str(cause), is_data_error=True)
    if head["stall"]:
        return TrainingFailed(None, head["stall"])
    if head["commit_failures"]:
        tag, reason = head["commit_failures"][0]
        return TrainingFailed(None, f"checkpoint {tag} was not committed: {reason}")
    if failures:
        rank = min(failures)
        return TrainingFailed(rank, _last_line(failures[rank]))
    return TrainingFailed(None, _last_line(error) if error else "unknown failure")


def _root_cause(error: BaseException) -> BaseException:
    """Unwrap Ray's task/actor error wrappers down to the exception the worker raised."""
    seen = 0
    while seen < 10:
        inner = getattr(error, "cause", None) or error.__cause__
        if inner is None or inner is error:
            return error
        error, seen = inner, seen + 1
    return error


def _last_line(error: BaseException) -> str:
    """The user-facing line of a (possibly Ray-wrapped) exception: its final 'Type: message'."""
    lines = [line for line in str(error).strip().splitlines() if line.strip()]
    return lines[-1].strip() if lines else type(error).__name__
