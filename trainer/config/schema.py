"""The job schema: one typed, frozen, validated description of a fine-tuning run.

It is torch-free on purpose: the launcher validates it in the user's shell, and each worker
re-validates the same resolved dict it receives, so both sides agree on every default.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from trainer.config.base import NonNegativeInt, PositiveInt, Section
from trainer.config.cluster import ClusterConfig
from trainer.config.peft import NoPeft, PeftConfig


class ModelConfig(Section):
    path: str = Field(
        description="Local Hugging Face model directory, or a known alias (see `ftlaunch models`)."
    )
    task: Literal["sequence-classification", "causal-lm"] = Field(
        default="sequence-classification",
        description="sequence-classification (a new head over the labels) or causal-lm.",
    )

    def is_causal_lm(self) -> bool:
        return self.task == "causal-lm"


class DataConfig(Section):
    train: str = Field(
        description="Training split: a JSONL/CSV/TSV/Parquet file or datasets directory "
        "(tokenized into the cache), a prepared directory, or a pyarrow.fs URI of one."
    )
    validation: str = Field(description="Validation split, in any form data.train accepts.")
    test: str = Field(description="Test split, in any form data.train accepts.")
    text_column: str = Field(default="text", description="Column holding the text.")
    label_column: str = Field(
        default="label", description="sequence-classification: column holding the label."
    )
    max_length: Annotated[int, Field(gt=0, le=1_000_000)] = Field(
        default=128, description="Tokens per example; longer examples are truncated."
    )
    # causal-lm only (see launcher/data/causal.py): how rows become tokens and loss masks
    format: Literal["text", "prompt-completion", "chat"] = Field(
        default="text",
        description="causal-lm: text (loss on every token), prompt-completion (loss on the "
        "completion only) or chat (loss on assistant turns only).",
    )
    prompt_column: str = Field(default="prompt", description="prompt-completion: prompt column.")
    completion_column: str = Field(
        default="completion", description="prompt-completion: completion column."
    )
    messages_column: str = Field(
        default="messages", description="chat: column with the list of {role, content} turns."
    )
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
    lr: Annotated[float, Field(gt=0, le=1)] = Field(default=5e-5, description="Peak learning rate.")
    weight_decay: Annotated[float, Field(ge=0)] = Field(
        default=0.01, description="AdamW weight decay (not applied to biases and norms)."
    )
    beta1: Annotated[float, Field(ge=0, lt=1)] = Field(default=0.9, description="AdamW beta1.")
    beta2: Annotated[float, Field(ge=0, lt=1)] = Field(default=0.999, description="AdamW beta2.")
    eps: Annotated[float, Field(gt=0)] = Field(default=1e-8, description="AdamW epsilon.")
    schedule: Literal["linear", "constant"] = Field(
        default="linear", description="After warmup: linear decay to 0, or constant."
    )
    warmup_ratio: Annotated[float, Field(ge=0, lt=1)] = Field(
        default=0.1, description="Share of the optimizer steps spent warming up linearly."
    )
    grad_clip: Annotated[float, Field(ge=0)] = Field(
        default=1.0, description="Max global grad norm; 0 disables."
    )


class TrainingConfig(Section):
    epochs: PositiveInt = Field(default=3, description="Passes over the training split.")
    max_steps: PositiveInt | None = Field(
        default=None, description="Stop after this many optimizer steps."
    )
    micro_batch_size: PositiveInt = Field(
        default=16, description="Examples per worker per forward pass."
    )
    eval_batch_size: PositiveInt | None = Field(
        default=None, description="Examples per worker per evaluation batch; default: 2 x micro."
    )
    grad_accum: PositiveInt = Field(
        default=1, description="Micro-batches accumulated into one optimizer step."
    )
    eval_every: PositiveInt | Literal["epoch"] = Field(
        default="epoch", description="Optimizer steps (or 'epoch') between validations."
    )
    log_every: PositiveInt = Field(
        default=10, description="Optimizer steps per metrics window (one line in metrics.jsonl)."
    )
    early_stopping_patience: NonNegativeInt | None = Field(
        default=None, description="Evaluations without improvement before stopping; null disables."
    )
    early_stopping_metric: Literal["accuracy", "macro_f1", "loss"] = Field(
        default="accuracy",
        description="Validation metric that picks the best weights (causal-lm: loss only).",
    )
    seed: int = Field(default=42, description="Seeds the head init, the data order and dropout.")
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
    generate_max_new_tokens: PositiveInt = Field(
        default=32, description="causal-lm: length of each generation sample."
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

    def eval_due(self, step: int, end_of_epoch: bool, total_steps: int) -> bool:
        """Validate after optimizer step `step`? The last step always does: the best weights
        are chosen among validated ones."""
        if step == total_steps:
            return True
        return end_of_epoch if self.eval_every == "epoch" else step % self.eval_every == 0

    def checkpoint_due(self, step: int, end_of_epoch: bool) -> bool:
        """Checkpoint after optimizer step `step`?"""
        if self.checkpoint_every is None:
            return False
        if self.checkpoint_every == "epoch":
            return end_of_epoch
        return step % self.checkpoint_every == 0

    def log_due(self, step: int, total_steps: int) -> bool:
        """Close a metrics window after optimizer step `step`?"""
        return step % self.log_every == 0 or step == total_steps


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
    backend: Literal["deepspeed", "accelerate"] = Field(
        default="deepspeed", description="deepspeed: DeepSpeed's engine; accelerate: Accelerate."
    )
    strategy: Literal["deepspeed", "ddp", "fsdp"] = Field(
        default="deepspeed",
        description="With backend accelerate: ddp, fsdp, or deepspeed (through Accelerate's plugin).",
    )
    zero_stage: Annotated[int, Field(ge=0, le=3)] = Field(
        default=2,
        description="ZeRO stage: 0 plain data parallel; 1 shards optimizer state; 2 also "
        "gradients; 3 also parameters.",
    )
    offload: Literal["none", "cpu"] = Field(
        default="none", description="DeepSpeed: keep optimizer state in CPU memory (ZeRO >= 1)."
    )
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


class OutputConfig(Section):
    dir: str = Field(
        default="runs/default",
        description="Run directory on the head: model, metrics, checkpoints, summary.",
    )
    keep_last: PositiveInt = Field(default=2, description="Complete checkpoints kept on the head.")
    mlflow_uri: str | None = Field(
        default=None,
        description="MLflow tracking URI (http://..., sqlite:///...); the head logs metrics there.",
    )
    mlflow_experiment: str | None = Field(
        default=None, description="MLflow experiment name; default: the job's name."
    )


class JobConfig(Section):
    name: str = Field(default="ftlaunch-job", description="Job name: prefixes run ids.")
    model: ModelConfig = Field(description="The pretrained model and its task head.")
    data: DataConfig = Field(description="Where the splits are and how they are tokenized.")
    peft: PeftConfig = Field(
        default=NoPeft(), description="Parameter-efficient tuning; method none trains all weights."
    )
    optim: OptimConfig = Field(default=OptimConfig(), description="AdamW and its schedule.")
    training: TrainingConfig = Field(
        default=TrainingConfig(), description="Batches, cadence, stopping, precision."
    )
    engine: EngineConfig = Field(default=EngineConfig(), description="DeepSpeed or Accelerate.")
    cluster: ClusterConfig = Field(
        default=ClusterConfig(), description="Ray cluster, workers, placement."
    )
    output: OutputConfig = Field(
        default=OutputConfig(), description="Run directory and experiment tracking."
    )

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
        """Samples per optimizer step, at the launch size (cluster.num_workers, or its max)."""
        t = self.training
        return t.micro_batch_size * t.grad_accum * self.cluster.max_workers()

    @model_validator(mode="after")
    def _elastic_sizes_keep_the_batch(self) -> JobConfig:
        for world in self.cluster.world_sizes():
            grad_accum_for(self.global_batch_size(), self.training.micro_batch_size, world)
        return self

    def at_world_size(self, world: int) -> JobConfig:
        """This job on `world` workers with the same global batch: grad_accum adjusted.

        Raises:
            ValueError: micro_batch_size x world does not divide the global batch.
        """
        t = self.training
        grad_accum = grad_accum_for(self.global_batch_size(), t.micro_batch_size, world)
        if world == self.cluster.num_workers and grad_accum == t.grad_accum:
            return self
        return self.model_copy(
            update={
                "training": t.model_copy(update={"grad_accum": grad_accum}),
                "cluster": self.cluster.model_copy(update={"num_workers": world}),
            }
        )


def grad_accum_for(global_batch: int, micro_batch_size: int, workers: int) -> int:
    """The grad_accum that keeps `global_batch` samples per step on `workers` workers.

    Raises:
        ValueError: naming micro_batch_size, the workers and grad_accum when none does.
    """
    per_micro_step = micro_batch_size * workers
    if global_batch % per_micro_step:
        raise ValueError(
            f"training.grad_accum: the global batch of {global_batch} samples cannot be kept on "
            f"{workers} workers: micro_batch_size {micro_batch_size} x {workers} workers = "
            f"{per_micro_step} does not divide it (grad_accum would be "
            f"{global_batch / per_micro_step:g})"
        )
    return global_batch // per_micro_step
