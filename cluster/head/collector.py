"""The head-side collector: one Ray actor pinned to the head node that everything workers send
goes through. Workers never write to the head's disk themselves (there may be no shared
filesystem).

The actor is a thin dispatcher; the work is done by
    MetricsLog           (metrics_log.py)   metrics.jsonl, TensorBoard, MLflow/W&B (queued), display
    FileReceiver         (files.py)         artifact files in bounded, verified chunks
    CheckpointCommitter  (checkpoints.py)   checkpoint staging, commits on their own thread
    CheckpointStreamServer (checkpoint_stream.py) checkpoint files over authenticated TCP
    Watchdog             (watchdog.py)      heartbeats -> a stalled rank, named
plus the stop flag that turns the launcher's SIGTERM into a preemption checkpoint.

Two concurrency groups keep the control plane from going deaf: CONTROL (stop flag, heartbeats,
metrics, commit results) and FILES (chunks, checkpoint files, resume reads) each have their own
thread, so a stop request or a heartbeat never waits behind a transfer; commits run on the
committer's thread and the watchdog on one of its own.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray

from cluster.actors import ActorHandle, get
from cluster.auth.channel import key_from_token
from cluster.auth.secrets import unseal_into_environ
from cluster.auth.token import load_token
from cluster.head.checkpoint_stream import CheckpointStreamServer
from cluster.head.checkpoints import CheckpointCommitter
from cluster.head.files import FileReceiver
from cluster.head.metrics_log import MetricsLog, Trackers
from cluster.head.watchdog import Stall, Watchdog
from trainer.formats.object_checkpoints import is_store_uri, open_checkpoint_store
from trainer.formats.rundir import CHECKPOINT_DIR
from trainer.formats.signing import CheckpointSigning

CONTROL, FILES = "control", "files"
CONCURRENCY_GROUPS = {CONTROL: 1, FILES: 1}
AGENT_CALL_TIMEOUT_S = 40.0
# The head takes at most this many heartbeat batches a second: node agents forward every
# max(1 s, nodes / this) (at most MAX_FORWARD_S, and a fifth of the heartbeat timeout), so its
# load stays flat as nodes are added; a silence is seen that much later at most.
MAX_BATCHES_PER_S = 32
MAX_FORWARD_S = 4.0

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Liveness:
    """How the head watches the ranks (from training.*) and where stacks go."""

    heartbeat_timeout_s: float
    stall_timeout_s: float | None
    stacks_dir: str
    # Starts a node's agent (cluster/worker/node_agent.py:start_node_agent), handed in by the
    # backend: the head does not import the worker side.
    start_agent: Callable[[ActorHandle, str], ActorHandle] | None = None
    check_every_s: float = 1.0


class RunCollector:
    """Plain class (tested without Ray); `collector_actor()` wraps it as a pinned Ray actor."""

    def __init__(
        self,
        run_dir: str,
        checkpoint_dir: str | None = None,
        keep_last: int = 2,
        trackers: Trackers | None = None,
        signing: CheckpointSigning | None = None,
        liveness: Liveness | None = None,
        stream_host: str = "127.0.0.1",
    ) -> None:
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.metrics = MetricsLog(self.run_dir, trackers or Trackers())
        self.files = FileReceiver()
        token = load_token()
        # Commits are signed and resumes checked with the output.dir's key (signing.py).
        # `checkpoint_dir` is a directory on the head, or an object store's URI: the head
        # commits there with the job's credentials (cluster.secret_env, sealed like the ranks').
        location = checkpoint_dir or self.run_dir / CHECKPOINT_DIR
        if is_store_uri(location):
            unseal_into_environ(token)
        store = open_checkpoint_store(location, keep_last, signing)
        self.checkpoints = CheckpointCommitter(store, self._commit_result)
        # Started on the first route asked for; the key is the run's token (a random one when the
        # cluster runs without: then `checkpoint_route` hands it out, as unprotected as the actor).
        self._stream_key = key_from_token(token) if token else secrets.token_bytes(32)
        self._stream_key_shared = token is None
        self.stream = CheckpointStreamServer(self.checkpoints, self._stream_key, stream_host)
        self._stop_requested = False
        self._preempted_tag: str | None = None
        self.starts = 0
        self.attempt = 0  # worker groups started (rank 0's rank_start), for stacks/attempt-N
        self._liveness = liveness
        self._watchdog = (
            Watchdog(liveness.heartbeat_timeout_s, liveness.stall_timeout_s) if liveness else None
        )
        self._watch_lock = threading.Lock()
        self._agents: dict[str, ActorHandle] = {}
        self._nodes_seen: set[str] = set()
        self._stall: tuple[int, str] | None = None  # (attempt, line) of the newest stall
        self._commit_failures: list[tuple[int, str, str]] = []  # (attempt, tag, reason)
        self._input_error: dict[str, Any] | None = None  # the first rank that refused its input

    # --- metrics
    @ray.method(concurrency_group=CONTROL)
    def report(self, record: dict[str, Any]) -> None:
        if record.get("event") == "preempted":
            self._preempted_tag = record.get("tag")
        if record.get("event") == "input_error" and self._input_error is None:
            self._input_error = {"rank": record.get("rank"), "error": record.get("error")}
        if record.get("event") == "rank_start" and record.get("rank") == 0:
            self.attempt += 1
        if record.get("event") == "start":
            self.starts += 1
            self.metrics.restart()
            discarded = self.checkpoints.restart()
            record = record | {"attempt": self.starts, "discarded_partial": discarded}
        self.metrics.write(record)

    @ray.method(concurrency_group=CONTROL)
    def drain(self) -> list[dict[str, Any]]:
        return self.metrics.drain()

    @ray.method(concurrency_group=CONTROL)
    def input_error(self) -> dict[str, Any] | None:
        """The first rank's refusal of its input ({rank, error}), if one refused: ends the run."""
        return self._input_error

    @ray.method(concurrency_group=CONTROL)
    def starts_seen(self) -> int:
        """How many times the worker group started (1 + restarts after failures)."""
        return self.starts

    @ray.method(concurrency_group=CONTROL)
    def close(self, status: str = "FINISHED") -> None:
        """End of the run; `status` is MLflow's: FINISHED, FAILED or KILLED (preempted)."""
        self.metrics.close(status)

    # --- stop flag (preemption)
    @ray.method(concurrency_group=CONTROL)
    def request_stop(self) -> None:
        """The launcher got SIGTERM: workers checkpoint and stop at their next step."""
        self._stop_requested = True

    @ray.method(concurrency_group=CONTROL)
    def stop_requested(self) -> bool:
        return self._stop_requested

    @ray.method(concurrency_group=CONTROL)
    def preempted_tag(self) -> str | None:
        """The checkpoint committed in answer to a stop request, if the workers got that far."""
        return self._preempted_tag

    # --- liveness
    @ray.method(concurrency_group=CONTROL)
    def node_agent(self, node_id: str) -> ActorHandle:
        """The heartbeat agent of `node_id`, started on the first request (one per node)."""
        if node_id not in self._agents:
            if self._liveness is None or self._liveness.start_agent is None:
                raise RuntimeError("this collector watches no heartbeats")
            me = ray.get_runtime_context().current_actor
            self._agents[node_id] = self._liveness.start_agent(me, node_id)
        return self._agents[node_id]

    @ray.method(concurrency_group=CONTROL)
    def heartbeats(self, node_id: str, beats: list[dict[str, Any]]) -> tuple[bool, float]:
        """A node agent's batch of its ranks' newest beats; returns the stop flag and when to
        send the next batch."""
        self._nodes_seen.add(node_id)
        if self._watchdog is not None:
            with self._watch_lock:
                self._watchdog.observe([b | {"node_id": node_id} for b in beats], time.monotonic())
        return self._stop_requested, self.forward_interval_s()

    def forward_interval_s(self) -> float:
        nodes = max(len(self._nodes_seen), 1)
        limit = MAX_FORWARD_S
        if self._liveness is not None:
            limit = min(limit, self._liveness.heartbeat_timeout_s / 5)
        return max(1.0, min(nodes / MAX_BATCHES_PER_S, limit))

    @ray.method(concurrency_group=CONTROL)
    def outcome(self) -> dict[str, Any]:
        """What ended the current attempt on the head's side: a stall and/or commit failures,
        and whether a rank refused its input (in any attempt: that ends the run)."""
        stall = self._stall[1] if self._stall and self._stall[0] == self.attempt else None
        failed = [(tag, why) for a, tag, why in self._commit_failures if a == self.attempt]
        return {
            "attempt": self.attempt,
            "stall": stall,
            "commit_failures": failed,
            "input_error": self._input_error,
        }

    @ray.method(concurrency_group=CONTROL)
    def watch(self) -> None:
        """Start the watchdog's thread (the actor does, once; tests call check_liveness)."""
        if self._liveness is not None:
            threading.Thread(target=self._watch, name="ftlaunch-watchdog", daemon=True).start()

    def check_liveness(self, now: float) -> str | None:
        """Act on a stall, if there is one now: save every rank's stacks, report the one line,
        kill the named ranks (Ray Train restarts the group). Returns the line."""
        if self._watchdog is None or self._liveness is None:
            return None
        with self._watch_lock:
            stall = self._watchdog.check(now)
            if stall is None:
                return None
            ranks = self._watchdog.live_ranks()
            self._watchdog.retire()  # the next stall is judged on the restarted group
        directory = Path(self._liveness.stacks_dir) / f"attempt-{self.attempt}"
        self._save_stacks(directory, ranks, stall)
        line = stall.line(str(directory))
        self._stall = (self.attempt, line)
        self.metrics.write(
            stall.record() | {"attempt": self.attempt, "message": line, "stacks": str(directory)}
        )
        doomed: dict[str, list[int]] = {}
        for r in stall.ranks:
            doomed.setdefault(r.node_id, []).append(r.pid)
        self._call_agents(doomed, "kill")
        return line

    def _watch(self) -> None:
        assert self._liveness is not None
        while True:
            time.sleep(self._liveness.check_every_s)
            try:
                self.check_liveness(time.monotonic())
            except Exception:  # the watchdog must outlive any one failure
                log.exception("watchdog check failed")

    def _save_stacks(self, directory: Path, ranks: list[Any], stall: Stall) -> None:
        by_node: dict[str, dict[int, int]] = {}
        for r in ranks:
            by_node.setdefault(r.node_id, {})[r.rank] = r.pid
        stacks = self._call_agents(by_node, "dump_stacks")
        directory.mkdir(parents=True, exist_ok=True)
        named = {r.rank for r in stall.ranks}
        for r in ranks:
            text = stacks.get(r.node_id, {}).get(
                r.rank, "# no stacks: the node agent did not answer\n"
            )
            header = (
                f"# rank {r.rank} on {r.host}, pid {r.pid}{' (stalled)' if r.rank in named else ''}\n"
                f"# phase {r.phase} of step {r.step}; last heartbeat seq {r.seq}\n"
                f"# {time.strftime('%Y-%m-%dT%H:%M:%S%z')}\n"
            )
            (directory / f"rank-{r.rank}.txt").write_text(header + text)

    def _call_agents(self, by_node: dict[str, Any], method: str) -> dict[str, Any]:
        """Call `method(args)` on each node's agent at once; nodes that do not answer in time are
        left out (their ranks' files say so)."""
        refs = {
            node: getattr(self._agents[node], method).remote(args)
            for node, args in by_node.items()
            if node in self._agents
        }
        if not refs:
            return {}
        ready, _ = ray.wait(
            list(refs.values()), num_returns=len(refs), timeout=AGENT_CALL_TIMEOUT_S
        )
        answers = {}
        for node, ref in refs.items():
            try:
                if ref not in ready:
                    raise TimeoutError(f"no answer within {AGENT_CALL_TIMEOUT_S:.0f} s")
                answers[node] = get(ref, timeout=1)
            except Exception as exc:  # a dead or hung node: note it, go on with the others
                log.warning("node agent %s: %s failed: %s", node, method, exc)
        return answers

    # --- files
    @ray.method(concurrency_group=FILES)
    def begin_file(self, name: str) -> str:
        return self.files.begin(self.run_dir, name)

    @ray.method(concurrency_group=FILES)
    def write_chunk(self, handle: str, data: bytes) -> None:
        self.files.write_chunk(handle, data)

    @ray.method(concurrency_group=FILES)
    def end_file(self, handle: str, sha256: str) -> None:
        self.files.end(handle, sha256)

    # --- checkpoints
    @ray.method(concurrency_group=CONTROL)
    def checkpoint_route(self, tag: str) -> dict[str, Any]:
        """Where ranks on other nodes send their files of `tag`, with its nonce (and the key,
        only when the cluster has no token to derive it from)."""
        route = self.stream.route(tag)
        return route | {"key": self._stream_key.hex()} if self._stream_key_shared else route

    @ray.method(concurrency_group=FILES)
    def checkpoint_staging(self, tag: str) -> str:
        """Where ranks on the head node write their part of checkpoint `tag` directly (with an
        object store: the prefix every rank uploads this attempt's files to)."""
        return str(self.checkpoints.staging(tag))

    @ray.method(concurrency_group=FILES)
    def checkpoint_uploaded(
        self, tag: str, rank: int, digests: dict[str, str], state: dict[str, Any] | None
    ) -> None:
        """Rank `rank` uploaded its files of `tag` to the object store (name -> sha256)."""
        self.checkpoints.uploaded(tag, digests)
        self.checkpoints.submitted(tag, rank, state)

    @ray.method(concurrency_group=FILES)
    def checkpoint_submitted(self, tag: str, rank: int, state: dict[str, Any] | None) -> None:
        """Rank `rank`'s files of `tag` are all here; the commit is queued once every rank's
        are (its result: `checkpoint_status`)."""
        self.checkpoints.submitted(tag, rank, state)

    @ray.method(concurrency_group=CONTROL)
    def checkpoint_failed(self, tag: str, rank: int, reason: str) -> None:
        """Rank `rank` could not write or send its part of `tag`."""
        self.checkpoints.failed(tag, f"rank {rank} could not save its part: {reason}")

    @ray.method(concurrency_group=CONTROL)
    def checkpoint_status(self, tag: str) -> tuple[str, str]:
        return self.checkpoints.status(tag)

    @ray.method(concurrency_group=CONTROL)
    def checkpoint_is_committed(self, tag: str) -> bool:
        return self.checkpoints.is_committed(tag)

    @ray.method(concurrency_group=FILES)
    def checkpoint_latest(self, run_id: str) -> str | None:
        return self.checkpoints.latest(run_id)

    @ray.method(concurrency_group=FILES)
    def checkpoint_verified(self, tag: str) -> dict[str, Any]:
        return self.checkpoints.verified(tag)

    @ray.method(concurrency_group=FILES)
    def checkpoint_path(self, tag: str) -> str:
        return str(self.checkpoints.path(tag))

    @ray.method(concurrency_group=FILES)
    def checkpoint_read(self, tag: str, name: str, offset: int, length: int) -> bytes:
        return self.checkpoints.read(tag, name, offset, length)

    def _commit_result(self, record: dict[str, Any]) -> None:
        """From the commit thread: a checkpoint committed or failed."""
        if record["event"] == "commit_failed":
            self._commit_failures.append((self.attempt, record["tag"], record["error"]))
        self.metrics.write(record)


def collector_actor(
    run_dir: Path,
    checkpoint_dir: Path | str,
    keep_last: int,
    trackers: Trackers,
    signing: CheckpointSigning | None = None,
    liveness: Liveness | None = None,
) -> ActorHandle:
    """Start the collector on this (the driver's, i.e. head's) node; it uses no CPU slot."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    here = ray.get_runtime_context().get_node_id()
    host = ray.util.get_node_ip_address()  # the address Ray's own processes use on this node
    as_actor: Any = ray.remote  # its overloads do not cover keyword-only use (see actors.py)
    actor_cls: ActorHandle = as_actor(concurrency_groups=CONCURRENCY_GROUPS)(RunCollector)
    collector = actor_cls.options(
        num_cpus=0,
        max_concurrency=1,
        scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=here, soft=False),
    ).remote(str(run_dir), str(checkpoint_dir), keep_last, trackers, signing, liveness, host)
    get(collector.watch.remote(), timeout=120)  # also: the actor is up before workers start
    return collector
