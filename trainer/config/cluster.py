"""The `cluster` section: where the workers run, what each one reserves, and how they are placed.

Rules that involve several placement fields are checked here, so a bad combination is a config
error (exit 2) before anything starts; whether the request fits a real cluster is decided on the
head by `cluster/placement/` (pure fit check, then a bounded reservation).
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import ByteSize, Discriminator, Field, Tag, field_validator, model_validator

from trainer.config.base import PositiveInt, Section

# Requested through their own fields, so a typo like {"gpu": 1} is not silently a new resource.
DEDICATED_RESOURCES = {
    "CPU": "cluster.cpus_per_worker",
    "GPU": "cluster.gpus_per_worker",
    "memory": "cluster.memory_per_worker",
}

# Names that look like credentials (HF_TOKEN, WANDB_API_KEY, AWS_SECRET_ACCESS_KEY, DB_PASSWORD)
# but not TOKENIZERS_PARALLELISM: the marker must end a word. The same rule as the sealed-secret
# shipping in cluster/auth/secrets.py, which cannot be imported here (trainer never imports
# cluster).
SECRET_NAME = re.compile(r"(TOKEN|KEY|SECRET|PASSWORD)S?(?![A-Z])", re.IGNORECASE)
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# Set by Ray and ftlaunch for every worker; a job overriding them would break the run.
RESERVED_ENV_PREFIXES = ("RAY_", "FTLAUNCH_")
RESERVED_ENV_NAMES = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def env_problems(env: dict[str, str]) -> list[str]:
    """Every name in `cluster.env` that cannot be passed in plain text, one line each."""
    problems = []
    for name in env:
        field = f"cluster.env.{name}"
        if not ENV_NAME.fullmatch(name):
            problems.append(f"{field}: not a valid environment variable name")
        elif SECRET_NAME.search(name):
            problems.append(
                f"{field}: looks like a secret; plain values are written to config.yaml and "
                "shown in job info, so list the name in cluster.secret_env and set it in the "
                "launching shell instead"
            )
        elif name.startswith(RESERVED_ENV_PREFIXES) or name in RESERVED_ENV_NAMES:
            problems.append(f"{field}: is set by Ray/ftlaunch for every worker; not overridable")
    return problems


class WorkerRange(Section):
    """An elastic worker count: start with as many as fit (up to `max`), and after a node loss
    restart with whatever can be placed, down to `min`; the global batch stays the one at `max`."""

    min: PositiveInt = Field(description="Fewest workers the job continues on after a node loss.")
    max: PositiveInt = Field(description="Most workers; the global batch is defined at this size.")

    @model_validator(mode="after")
    def _min_at_most_max(self) -> WorkerRange:
        if self.min > self.max:
            raise ValueError(
                f"cluster.num_workers.min: must be <= cluster.num_workers.max "
                f"(got {self.min} > {self.max})"
            )
        return self


def _worker_count_kind(value: object) -> str:
    # One branch per input shape, so an error names the branch the user meant; the tags are
    # spelled so that config_loading drops them from the field path ("int", "min-max").
    return "min-max" if isinstance(value, (dict, WorkerRange)) else "int"


WorkerCount = Annotated[
    Annotated[PositiveInt, Tag("int")] | Annotated[WorkerRange, Tag("min-max")],
    Discriminator(_worker_count_kind),
]


class ClusterConfig(Section):
    backend: Literal["ray"] = Field(default="ray", description="Scheduler backend (Ray only).")
    address: str | None = Field(
        default=None, description="Existing Ray cluster; null starts an embedded one."
    )
    num_workers: WorkerCount = Field(
        default=2,
        description="Training processes (ranks), or {min, max}: elastic, restarts after a node "
        "loss continue on the workers that can be placed (global batch kept).",
    )
    cpus_per_worker: Annotated[float, Field(gt=0)] = Field(
        default=1.0, description="CPUs each worker reserves (also its torch thread count)."
    )
    gpus_per_worker: Annotated[float, Field(ge=0)] = Field(
        default=0.0,
        description="GPUs each worker reserves: 1 (one process per GPU), a fraction to share one, "
        "or 0 to train on CPUs over gloo.",
    )
    num_cpus: PositiveInt | None = Field(
        default=None,
        description="CPUs of the embedded cluster; default: this machine's core count.",
    )
    placement: Literal["pack", "spread", "strict_spread"] = Field(
        default="pack",
        description="pack: as few nodes as possible; spread: across nodes; strict_spread: one "
        "worker per node.",
    )
    num_nodes: PositiveInt | None = Field(
        default=None, description="spread: exactly this many nodes; pack: at most this many."
    )
    memory_per_worker: Annotated[ByteSize, Field(gt=0)] | None = Field(
        default=None, description="Memory each worker reserves: bytes or '4GB', '512MiB'."
    )
    custom_resources: dict[str, Annotated[float, Field(gt=0)]] = Field(
        default_factory=dict,
        description="Extra Ray resources per worker, e.g. {'accelerator_type:A100': 0.01}.",
    )
    placement_timeout_s: Annotated[float, Field(gt=0)] = Field(
        default=600.0,
        description="How long to wait for the workers to be placed: for room on a busy cluster "
        "and for the nodes an autoscaler must add (progress is printed).",
    )
    secret_env: list[str] = Field(
        default_factory=list,
        description="Env var names passed to workers sealed, never printed or written. Only "
        "these travel: a variable named like a credential (TOKEN, KEY, SECRET, PASSWORD) but "
        "not listed stays here, and a warning names it.",
    )
    env: dict[str, str] = Field(
        default_factory=dict,
        description="Plain environment variables for every worker, e.g. {NCCL_SOCKET_IFNAME: "
        "eth0, HF_HOME: /scratch/hf}; never secrets (names like *_TOKEN, *_KEY are refused: "
        "use cluster.secret_env).",
    )
    dashboard: bool = Field(
        default=False, description="Start the dashboard/Jobs API on the embedded cluster."
    )
    dashboard_host: str = Field(
        default="127.0.0.1",
        description="Interface the embedded dashboard binds to; anything but 127.0.0.1 is an "
        "explicit opt-out of loopback-only access.",
    )

    def uses_gpu(self) -> bool:
        return self.gpus_per_worker > 0

    def max_workers(self) -> int:
        """The largest world size: the launch size, at which the global batch is defined."""
        n = self.num_workers
        return n.max if isinstance(n, WorkerRange) else n

    def min_workers(self) -> int:
        """The smallest world size the job may continue on."""
        n = self.num_workers
        return n.min if isinstance(n, WorkerRange) else n

    def is_elastic(self) -> bool:
        return isinstance(self.num_workers, WorkerRange) and self.min_workers() < self.max_workers()

    def world_sizes(self) -> range:
        return range(self.min_workers(), self.max_workers() + 1)

    @model_validator(mode="after")
    def _placement_is_possible(self) -> ClusterConfig:
        problems = self.placement_problems()
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @field_validator("env", mode="before")
    @classmethod
    def _env_values_are_text(cls, value: object) -> object:
        """YAML reads `NCCL_IB_DISABLE: 1` as a number; the environment holds text."""
        if not isinstance(value, dict):
            return value
        scalar = (bool, int, float)
        return {
            k: (str(v).lower() if isinstance(v, bool) else str(v)) if isinstance(v, scalar) else v
            for k, v in value.items()
        }

    @model_validator(mode="after")
    def _env_is_plain(self) -> ClusterConfig:
        problems = env_problems(self.env)
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def placement_problems(self) -> list[str]:
        """Every inconsistency between placement fields, one line each naming the field."""
        problems = self._node_count_problems()
        if self.gpus_per_worker > 1:
            # No strategy here drives several GPUs from one process: the extra GPUs would idle.
            problems.append(
                "cluster.gpus_per_worker: one worker is one process driving one GPU "
                f"(got {self.gpus_per_worker:g}, which would leave all but one idle); for "
                "G GPUs per node use gpus_per_worker: 1 and cluster.num_workers: G x nodes "
                "(cluster.num_nodes: nodes)"
            )
        for name in self.custom_resources:
            if not name.strip():
                problems.append("cluster.custom_resources: resource names must not be empty")
            for reserved, field in DEDICATED_RESOURCES.items():
                if name.lower() == reserved.lower():
                    problems.append(
                        f"cluster.custom_resources.{name}: request {reserved} with {field} instead"
                    )
        return problems

    def _node_count_problems(self) -> list[str]:
        workers, nodes = self.max_workers(), self.num_nodes
        if nodes is None:
            return []
        if self.is_elastic():
            return [
                "cluster.num_nodes: pins workers to chosen nodes, which an elastic "
                "cluster.num_workers {min, max} cannot keep after a node loss; leave one out"
            ]
        if self.placement == "strict_spread" and nodes != workers:
            return [
                f"cluster.num_nodes: strict_spread puts every worker on its own node, so "
                f"num_nodes must equal cluster.num_workers ({workers}) or be left out "
                f"(got {nodes})"
            ]
        if self.placement == "spread" and nodes > workers:
            return [
                f"cluster.num_nodes: spreading {workers} worker(s) over exactly {nodes} nodes "
                f"leaves a node without a worker; use at most cluster.num_workers ({workers})"
            ]
        return []
