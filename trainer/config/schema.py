"""The job schema: one typed, frozen, validated description of a fine-tuning run.

It is torch-free on purpose: the launcher validates it in the user's shell, and each worker
re-validates the same resolved dict it receives, so both sides agree on every default.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

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
    task: Literal["sequence-classification"] = "sequence-classification"


class DataConfig(Section):
    train: str
    validation: str
    test: str
    text_column: str = "text"
    label_column: str = "label"
    max_length: Annotated[int, Field(gt=0, le=1_000_000)] = 128
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


class EngineConfig(Section):
    backend: Literal["deepspeed"] = "deepspeed"
    zero_stage: Annotated[int, Field(ge=0, le=3)] = 2
    offload: Literal["none", "cpu"] = "none"

    @model_validator(mode="after")
    def _offload_needs_zero(self) -> EngineConfig:
        if self.offload != "none" and self.zero_stage == 0:
            raise ValueError("engine.offload: 'cpu' needs engine.zero_stage >= 1")
        return self


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

    def uses_gpu(self) -> bool:
        return self.gpus_per_worker > 0


class OutputConfig(Section):
    dir: str = "runs/default"
    keep_last: PositiveInt = Field(default=2, description="Complete checkpoints kept on the head.")


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
