"""The `cluster` section: where the workers run, what each one reserves, and how they are placed.

Rules that involve several placement fields are checked here, so a bad combination is a config
error (exit 2) before anything starts; whether the request fits a real cluster is decided on the
head by `cluster/placement/` (pure fit check, then a bounded reservation).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import ByteSize, Discriminator, Field, Tag, model_validator

from trainer.config.base import PositiveInt, Section

# Requested through their own fields, so a typo like {"gpu": 1} is not silently a new resource.
DEDICATED_RESOURCES = {
    "CPU": "cluster.cpus_per_worker",
    "GPU": "cluster.gpus_per_worker",
    "memory": "cluster.memory_per_worker",
}


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
        default=0.0, description="GPUs each worker reserves; 0 trains on CPUs over gloo."
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
        default=600.0, description="How long to wait for the workers to be placed (autoscaling)."
    )
    secret_env: list[str] = Field(
        default_factory=list,
        description="Env var names passed to workers sealed, never printed or written; names "
        "containing TOKEN, KEY, SECRET or PASSWORD are treated the same without being listed.",
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

    def placement_problems(self) -> list[str]:
        """Every inconsistency between placement fields, one line each naming the field."""
        problems = self._node_count_problems()
        if self.gpus_per_worker > 1 and not float(self.gpus_per_worker).is_integer():
            problems.append(
                "cluster.gpus_per_worker: above 1 must be a whole number "
                f"(got {self.gpus_per_worker:g})"
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
