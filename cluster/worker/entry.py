"""What Ray Train runs in each worker: wire Ray-backed reporter, sinks, shard access and stop
signal into one WorkerIO and hand it, with the spec, to the trainer's entry point.

The trainer is named by a dotted string and imported inside the worker process, so `cluster`
never imports torch or the training code (import-linter checks it) and the head stays light.
"""

from __future__ import annotations

import importlib
import os
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ray

from cluster.actors import get
from cluster.auth.secrets import unseal_into_environ
from cluster.auth.token import load_token
from cluster.worker.files import CollectorSink
from cluster.worker.heartbeat import CALL_TIMEOUT_S, Heartbeat
from cluster.worker.model_cache import HeadModelSource, default_cache_root, local_model_dir
from cluster.worker.reporting import CollectorReporter
from cluster.worker.shards import HeadShardStore
from cluster.worker.store_checkpoints import checkpoint_sink
from trainer.config.errors import UnsupportedConfigError
from trainer.config.spec import RunSpec
from trainer.formats.checkpoints import CorruptCheckpointError
from trainer.formats.shard_stores import open_store
from trainer.formats.shards import CorruptShardError
from trainer.protocols import ShardStore, WorkerIO

TRAINER_ENTRY = "trainer.main:run_job"
# Bad input, not a crash: a shard or checkpoint that fails its checks, a config this worker
# cannot run. Another attempt would meet the same bytes, so the head is told and no restart
# trains (the backend turns it into exit 2).
INPUT_ERRORS = (CorruptShardError, CorruptCheckpointError, UnsupportedConfigError)


def train_worker(loop_config: dict[str, Any]) -> None:
    spec = RunSpec.model_validate(loop_config["spec"])
    collector = loop_config["collector"]
    if get(collector.input_error.remote(), timeout=CALL_TIMEOUT_S):
        return  # an earlier attempt refused its input: Ray Train's restart has nothing to do
    start = rank_start_record()
    collector.report.remote(start)
    # Secrets arrive sealed (cluster/auth/secrets.py); names only are reported, for audits.
    names = unseal_into_environ(load_token())
    if names:
        collector.report.remote({"event": "secret_env", "rank": start["rank"], "names": names})
    node_id = ray.get_runtime_context().get_node_id()
    agent = get(collector.node_agent.remote(node_id), timeout=CALL_TIMEOUT_S)
    heartbeat = Heartbeat(agent, start["rank"], start["pid"]).start()
    # Beating (phase "setup", never judged stuck) while a large model streams to this node.
    spec = with_local_model(spec, loop_config["model_server"])
    io = WorkerIO(
        reporter=CollectorReporter(collector),
        artifacts=CollectorSink(collector),
        open_store=store_opener(loop_config["shard_server"]),
        checkpoints=checkpoint_sink(
            spec, collector, node_id == loop_config["head_node_id"], start["rank"]
        ),
        stop=heartbeat,  # the stop request comes back with the heartbeat's answer
        phases=heartbeat,
    )
    try:
        load_entry(TRAINER_ENTRY)(spec, io)
    except INPUT_ERRORS as error:
        refused = {"event": "input_error", "rank": start["rank"], "error": str(error)}
        get(collector.report.remote(refused), timeout=CALL_TIMEOUT_S)
        raise
    heartbeat.finish()


def with_local_model(spec: RunSpec, model_server: Any) -> RunSpec:
    """The spec with `model_dir` where this node can read the model: the head's path if this
    node sees it, else the node-local copy streamed from the head (fetched once per node)."""
    configured = spec.job.model.node_cache_dir
    root = Path(configured).expanduser() if configured else default_cache_root()
    local = local_model_dir(HeadModelSource(model_server), spec.model_dir, root)
    if local == Path(spec.model_dir):
        return spec
    return spec.model_copy(update={"model_dir": str(local)})


def load_entry(dotted: str) -> Callable[[RunSpec, WorkerIO], Any]:
    """`package.module:function` -> the function (imported now, in the worker)."""
    module, _, name = dotted.partition(":")
    return getattr(importlib.import_module(module), name)


def rank_start_record() -> dict[str, Any]:
    """Where this rank runs (every rank, every attempt), so users and tests can see placement."""
    import ray.train  # worker-side only: keeps `import cluster` light for the launcher

    context = ray.train.get_context()
    return {
        "event": "rank_start",
        "rank": context.get_world_rank(),
        "local_rank": context.get_local_rank(),
        "world_size": context.get_world_size(),
        "node_id": ray.get_runtime_context().get_node_id(),
        "hostname": socket.gethostname(),
        "pid": os.getpid(),
    }


def store_opener(shard_server: Any) -> Callable[[str], ShardStore]:
    """Read a split from where this node can see it; stream it from the head otherwise."""

    def open_split_store(location: str) -> ShardStore:
        try:
            return open_store(location)
        except FileNotFoundError:  # not on this node's disk: only the head has it
            return HeadShardStore(shard_server, location)

    return open_split_store
