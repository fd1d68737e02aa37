"""The job schema: one typed, frozen, validated description of a fine-tuning run.

It is torch-free on purpose: the launcher validates it in the user's shell, and each worker
re-validates the same resolved dict it receives, so both sides agree on every default.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ByteSize, ConfigDict, Field, field_validator, model_validator

from trainer.config.peft import NoPeft, PeftConfig

PositiveInt = Annotated[int, Field(gt=0)]
NonNegativeInt = Annotated[int, Field(ge=0)]


class Section(BaseModel):
    """Base for every section: unknown keys are errors, values never change after validation."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelConfig(Section):
    path: str = Field(
        description="Local Hugging Face model directory, or a known alias (see `ftlaunch models`)."
    )
    task: Literal["sequence-classification", "causal-lm"] = "sequence-classification"

    def is_causal_lm(self) -> bool:
        return self.task == "causal-lm"


class DataConfig(Section):
    train: str
    validation: str
    test: str
    text_column: str = "text"
    label_column: str = "label"
    max_length: Annotated[int, Field(gt=0, le=1_000_000)] = 128
    # causal-lm only (see launcher/causal_prepare.py): how rows become tokens and loss masks
    format: Literal["text", "prompt-completion", "chat"] = Field(
        default="text",
        description="causal-lm: text (loss on every token), prompt-completion (loss on the "
        "completion only) or chat (loss on assistant turns only).",
    )
    prompt_column: str = "prompt"
    completion_column: str = "completion"
    messages_column: str = "messages"
    packing: bool = Field(
        default=False,
        description="causal-lm: pack several examples into each max_length row (attention kept "
        "inside each example); false pads each micro-batch dynamically.",
    )
    cache_dir: str | None = Field(
        default=None,
        description="Where tokenized shards are cached; default ~/.cache/ftlaunch/shards.",
    )


class OptimConfig(Section):
    lr: Annotated[float, Field(gt=0, le=1)] = 5e-5
    weight_decay: Annotated[float, Field(ge=0)] = 0.01
    beta1: Annotated[float, Field(ge=0, lt=1)] = 0.9
    beta2: Annotated[float, Field(ge=0, lt=1)] = 0.999
    eps: Annotated[float, Field(gt=0)] = 1e-8
    schedule: Literal["linear", "constant"] = "linear"
    warmup_ratio: Annotated[float, Field(ge=0, lt=1)] = 0.1
    grad_clip: Annotated[float, Field(ge=0)] = Field(
        default=1.0, description="Max global grad norm; 0 disables."
    )


class TrainingConfig(Section):
    epochs: PositiveInt = 3
    max_steps: PositiveInt | None = Field(
        default=None, description="Stop after this many optimizer steps."
    )
    micro_batch_size: PositiveInt = 16
    eval_batch_size: PositiveInt | None = None
    grad_accum: PositiveInt = 1
    eval_every: PositiveInt | Literal["epoch"] = "epoch"
    log_every: PositiveInt = 10
    early_stopping_patience: NonNegativeInt | None = Field(
        default=None, description="Evaluations without improvement before stopping; null disables."
    )
    early_stopping_metric: Literal["accuracy", "macro_f1", "loss"] = "accuracy"
    seed: int = 42
    checkpoint_every: PositiveInt | Literal["epoch"] | None = Field(
        default=None, description="Optimizer steps (or 'epoch') between checkpoints; null: none."
    )
    max_failures: NonNegativeInt = Field(
        default=3,
        description="Worker-group restarts (from the newest checkpoint) before giving up.",
    )
    preemption_grace_s: Annotated[float, Field(gt=0)] = Field(
        default=60.0, description="After SIGTERM, how long to wait for the final checkpoint."
    )
    generate_samples: NonNegativeInt = Field(
        default=0,
        description="causal-lm: greedy continuations of this many validation prompts written to "
        "samples/step-N.jsonl at each evaluation; 0 disables.",
    )
    generate_max_new_tokens: PositiveInt = 32
    record_sample_ids: bool = Field(
        default=False,
        description="Report every step's sample ids to metrics.jsonl (audits, tests).",
    )
    precision: Literal["fp32", "bf16", "fp16"] = Field(
        default="fp32", description="bf16/fp16 mixed precision (fp16 needs GPUs)."
    )
    gradient_checkpointing: bool = Field(
        default=False, description="Recompute activations in backward: less memory, more compute."
    )

    def effective_eval_batch_size(self) -> int:
        return self.eval_batch_size or 2 * self.micro_batch_size

    def metric_is_better(self, candidate: float, best: float | None) -> bool:
        """Whether `candidate` improves on `best` for the chosen early-stopping metric."""
        if best is None:
            return True
        return candidate < best if self.early_stopping_metric == "loss" else candidate > best


class FsdpConfig(Section):
    """FSDP options (engine.backend: accelerate with engine.strategy: fsdp)."""

    sharding: Literal["full", "hybrid"] = Field(
        default="full",
        description="full: shard across all workers; hybrid: shard within a node, replicate across nodes.",
    )
    cpu_offload: bool = Field(
        default=False, description="Keep parameters, gradients and optimizer state in CPU memory."
    )


class EngineConfig(Section):
    backend: Literal["deepspeed", "accelerate"] = "deepspeed"
    strategy: Literal["deepspeed", "ddp", "fsdp"] = Field(
        default="deepspeed",
        description="With backend accelerate: ddp, fsdp, or deepspeed (through Accelerate's plugin).",
    )
    zero_stage: Annotated[int, Field(ge=0, le=3)] = 2
    offload: Literal["none", "cpu"] = "none"
    fsdp: FsdpConfig | None = Field(
        default=None, description="FSDP options; only with backend accelerate, strategy fsdp."
    )

    @model_validator(mode="after")
    def _offload_needs_zero(self) -> EngineConfig:
        if self.offload != "none" and self.zero_stage == 0:
            raise ValueError("engine.offload: 'cpu' needs engine.zero_stage >= 1")
        return self

    @model_validator(mode="after")
    def _options_match_the_engine(self) -> EngineConfig:
        """Each option belongs to one engine; setting it for another one is a mistake, not a no-op."""
        if self.backend == "deepspeed" and self.strategy != "deepspeed":
            raise ValueError(
                f"engine.strategy: '{self.strategy}' needs engine.backend: accelerate "
                "(the deepspeed backend runs DeepSpeed only)"
            )
        if self.fsdp is not None and self.strategy != "fsdp":
            raise ValueError(
                "engine.fsdp: FSDP options need engine.backend: accelerate and engine.strategy: "
                f"fsdp (got backend {self.backend}, strategy {self.strategy})"
            )
        if self.offload != "none" and not self.runs_deepspeed():
            raise ValueError(
                f"engine.offload: is a DeepSpeed option; engine.strategy is '{self.strategy}' "
                "(for FSDP use engine.fsdp.cpu_offload)"
            )
        return self

    def fsdp_options(self) -> FsdpConfig:
        return self.fsdp or FsdpConfig()

    def runs_deepspeed(self) -> bool:
        """Whether DeepSpeed does the work (directly, or through Accelerate's plugin)."""
        return self.strategy == "deepspeed"


class ClusterConfig(Section):
    backend: Literal["ray"] = "ray"
    address: str | None = Field(
        default=None, description="Existing Ray cluster; null starts an embedded one."
    )
    num_workers: PositiveInt = 2
    cpus_per_worker: Annotated[float, Field(gt=0)] = 1.0
    gpus_per_worker: Annotated[float, Field(ge=0)] = 0.0
    num_cpus: PositiveInt | None = Field(
        default=None,
        description="CPUs of the embedded cluster; default: this machine's core count.",
    )
    # Placement (README "Placement"); the pure fit check and Ray mapping live in cluster/.
    placement: Literal["pack", "spread", "strict_spread"] = "pack"
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

    @model_validator(mode="after")
    def _placement_is_possible(self) -> ClusterConfig:
        from trainer.config.placement import placement_config_problems

        problems = placement_config_problems(self)
        if problems:
            raise ValueError("; ".join(problems))
        return self


class OutputConfig(Section):
    dir: str = "runs/default"
    keep_last: PositiveInt = Field(default=2, description="Complete checkpoints kept on the head.")
    mlflow_uri: str | None = Field(
        default=None,
        description="MLflow tracking URI (http://..., sqlite:///...); the head logs metrics there.",
    )
    mlflow_experiment: str | None = Field(
        default=None, description="MLflow experiment name; default: the job's name."
    )


class JobConfig(Section):
    name: str = "ftlaunch-job"
    model: ModelConfig
    data: DataConfig
    peft: PeftConfig = NoPeft()
    optim: OptimConfig = OptimConfig()
    training: TrainingConfig = TrainingConfig()
    engine: EngineConfig = EngineConfig()
    cluster: ClusterConfig = ClusterConfig()
    output: OutputConfig = OutputConfig()

    @model_validator(mode="before")
    @classmethod
    def _causal_lm_stops_on_loss(cls, raw):
        """causal-lm has no accuracy: its early-stopping metric defaults to (and must be) loss."""
        if not isinstance(raw, dict) or not isinstance(raw.get("model"), dict):
            return raw
        if raw["model"].get("task") != "causal-lm":
            return raw
        training = raw.get("training")
        training = dict(training) if isinstance(training, dict) else {}
        training.setdefault("early_stopping_metric", "loss")
        return raw | {"training": training}

    @model_validator(mode="after")
    def _causal_lm_options_fit(self) -> JobConfig:
        if self.model.is_causal_lm():
            if self.training.early_stopping_metric != "loss":
                raise ValueError(
                    "training.early_stopping_metric: causal-lm stops on validation 'loss' "
                    f"(got {self.training.early_stopping_metric!r})"
                )
        elif self.data.packing or self.data.format != "text":
            raise ValueError(
                "data.format/data.packing: only for model.task 'causal-lm' "
                "(sequence-classification reads data.text_column and data.label_column)"
            )
        return self

    @field_validator("name")
    @classmethod
    def _name_is_simple(cls, value: str) -> str:
        if not value or any(ch in value for ch in "/\\\n"):
            raise ValueError("must be a non-empty name without slashes")
        return value

    @model_validator(mode="after")
    def _precision_and_peft_fit(self) -> JobConfig:
        if self.training.precision == "fp16" and not self.cluster.uses_gpu():
            raise ValueError(
                "training.precision: fp16 needs GPUs (cluster.gpus_per_worker > 0); "
                "on CPU use bf16 or fp32"
            )
        if self.peft.method == "prefix_tuning" and self.model.task == "sequence-classification":
            # peft's sequence-classification prefix path needs a `past_key_values` argument that
            # transformers 5 encoders and classifiers no longer take (checked, peft 0.21).
            raise ValueError(
                "peft.method: prefix_tuning is not available for model.task "
                "'sequence-classification' (the classifier takes no past_key_values); "
                "use prompt_tuning, or prefix_tuning with a causal-lm task"
            )
        return self

    def global_batch_size(self) -> int:
        t = self.training
        return t.micro_batch_size * t.grad_accum * self.cluster.num_workers
