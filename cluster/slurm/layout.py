"""Where a SLURM job's Ray lives: ports derived from the job id, directories below a per-user
root (pure functions).

Several jobs (and users) may share a node, so nothing may use Ray's fixed defaults (6379, 8265,
10001, 52365). Every node of job J gets a block of `PORTS_PER_NODE` ports derived from J and the
node's index in the job, in 20000-32767: above Ray's worker port range (10002-19999) and below
Linux's ephemeral range (32768+), where the OS hands out random ports. Blocks of different jobs
differ unless their ids are congruent modulo `JOB_SLOTS`; the node checks its block is free at
start and otherwise takes the next candidate (`attempt`), so a collision costs a probe, not a job.

Directories are not derived from the job id (ids are predictable, and a directory someone else
made in /tmp must never be used): each job gets a fresh `mkdtemp` directory below the user's
0700 root `/tmp/ftl-<uid>` on the batch host, and the same path on every other node, each
checked there for owner, mode and links (cluster/slurm/node.py).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

PORT_RANGE_START = 20000
PORT_RANGE_END = 32767  # inclusive; Linux's ephemeral ports start at 32768
RAY_WORKER_PORTS = (10002, 19999)  # Ray's default worker port range, never used for our blocks
PORTS_PER_NODE = 8
NODES_PER_JOB_SPAN = 16  # node indexes beyond this share blocks (they are on other hosts)
JOB_SPAN = PORTS_PER_NODE * NODES_PER_JOB_SPAN
JOB_SLOTS = (PORT_RANGE_END + 1 - PORT_RANGE_START) // JOB_SPAN
# Short on purpose: Ray's Unix socket paths (under the temp dir) are limited to ~107 bytes.
JOB_DIR_ROOT = Path("/tmp")
MKDTEMP_NAME_CHARS = 8


@dataclass(frozen=True)
class NodePorts:
    """The ports one Ray node of a job binds (`gcs` and `client` are used on the head only)."""

    gcs: int
    client: int
    node_manager: int
    object_manager: int
    dashboard_agent_grpc: int
    dashboard_agent_listen: int
    runtime_env_agent: int
    metrics_export: int

    def all(self) -> list[int]:
        return list(self.__dict__.values())

    def ray_start_args(self, head: bool) -> list[str]:
        args = [
            f"--node-manager-port={self.node_manager}",
            f"--object-manager-port={self.object_manager}",
            f"--dashboard-agent-grpc-port={self.dashboard_agent_grpc}",
            f"--dashboard-agent-listen-port={self.dashboard_agent_listen}",
            f"--runtime-env-agent-port={self.runtime_env_agent}",
            f"--metrics-export-port={self.metrics_export}",
        ]
        if head:
            args = [f"--port={self.gcs}", f"--ray-client-server-port={self.client}", *args]
        return args


def parse_job_id(job_id: str | int) -> int:
    """The numeric SLURM job id (array tasks `123_4` are not supported).

    Raises:
        ValueError: not a positive integer.
    """
    text = str(job_id).strip()
    if not text.isdigit() or int(text) < 1:
        raise ValueError(f"not a SLURM job id: {job_id!r}")
    return int(text)


def derive_ports(job_id: str | int, node_index: int, attempt: int = 0) -> NodePorts:
    """The port block of node `node_index` (0 = the Ray head) of a job, for the given attempt.

    Attempt k moves the whole job span k slots on, so retries stay out of other jobs' usual
    blocks as much as the range allows.
    """
    if node_index < 0 or attempt < 0:
        raise ValueError("node_index and attempt must be >= 0")
    slot = (parse_job_id(job_id) + attempt) % JOB_SLOTS
    base = PORT_RANGE_START + slot * JOB_SPAN + (node_index % NODES_PER_JOB_SPAN) * PORTS_PER_NODE
    return NodePorts(*range(base, base + PORTS_PER_NODE))


def user_root(uid: int, root: Path = JOB_DIR_ROOT) -> Path:
    """The per-user directory (0700) that holds this user's job directories on every node."""
    return root / f"ftl-{uid}"


def node_temp_dir(job_dir: Path, node_index: int) -> Path:
    """Ray's --temp-dir for one node; one per node, since nodes of a job may share a host."""
    return job_dir / f"r{node_index}"


_NODE_ADDR = re.compile(r"(?:^|\s)NodeAddr=(\S+)")


def parse_node_addr(scontrol_node_text: str) -> str | None:
    """`NodeAddr` from `scontrol show node -o NAME`: the address SLURM itself reaches the node at."""
    match = _NODE_ADDR.search(scontrol_node_text)
    return match.group(1) if match else None
