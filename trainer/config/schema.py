"""The job schema: one typed, frozen, validated description of a fine-tuning run.

It is torch-free on purpose: the launcher validates it in the user's shell, and each worker
re-validates the same resolved dict it receives, so both sides agree on every default.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from trainer.config.base import NonNegativeInt, PositiveInt, Section
from trainer.config.cluster import ClusterConfig
from trainer.config.peft import NoPeft, PeftConfig

WANDB_KEY = "WANDB_API_KEY"


class ModelConfig(Section):
    path: str = Field(
        description="Local Hugging Face model directory, a known alias (see `ftlaunch models`), "
        "or a Hub id `org/name[@revision]` resolved on the head through the Hugging Face cache "
        "(downloaded when the Hub is reachable; only the cache with HF_HUB_OFFLINE=1)."
    )
    task: Literal["sequence-classification", "causal-lm"] = Field(
        default="sequence-classification",
        description="sequence-classification (a new head over the labels) or causal-lm.",
    )
    attn_implementation: Literal["sdpa", "eager", "flash_attention_2"] | None = Field(
        default=None,
        description="Attention kernel: sdpa, eager, or flash_attention_2 (GPU workers, bf16/fp16, "
        "the flash-attn package installed on them); null: the architecture's default.",
    )
    node_cache_dir: str | None = Field(
        default=None,
        description="Where a worker whose node cannot see model.path keeps the copy streamed from "
        "the head (content-addressed, fetched once per node, reused across runs); default "
        "~/.cache/ftlaunch/models on that node.",
    )

    def is_causal_lm(self) -> bool:
        return self.task == "causal-lm"


class DataConfig(Section):
    train: str = Field(
        description="Training split: a JSONL/CSV/TSV/Parquet file or datasets directory "
        "(tokenized into the cache), a Hub dataset `hf://org/name[@revision][:split]` (through "
        "the Hugging Face cache, split default train), a prepared directory, or a pyarrow.fs URI "
        "of one."
    )
    validation: str | None = Field(
        default=None,
        description="Validation split, in any form data.train accepts; leave out to carve "
        "data.validation_split from train.",
    )
    validation_split: Annotated[float, Field(gt=0.0, le=0.5)] | None = Field(
        default=None,
        description="Share of the (raw) train rows held out for validation when data.validation "
        "is not given: seeded by training.seed, stratified by label for classification.",
    )
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
    name: Literal["adamw", "adamw_8bit", "sgd"] = Field(
        default="adamw",
        description="adamw (torch), adamw_8bit (bitsandbytes' 8-bit AdamW; bitsandbytes must be "
        "installed on the workers) or sgd (with optim.momentum).",
    )
    lr: Annotated[float, Field(gt=0, le=1)] = Field(default=5e-5, description="Peak learning rate.")
    weight_decay: Annotated[float, Field(ge=0)] = Field(
        default=0.01, description="Weight decay (not applied to biases and norms)."
    )
    beta1: Annotated[float, Field(ge=0, lt=1)] = Field(default=0.9, description="AdamW beta1.")
    beta2: Annotated[float, Field(ge=0, lt=1)] = Field(default=0.999, description="AdamW beta2.")
    eps: Annotated[float, Field(gt=0)] = Field(default=1e-8, description="AdamW epsilon.")
    momentum: Annotated[float, Field(ge=0, lt=1)] = Field(
        default=0.0, description="sgd: momentum (0 is plain SGD)."
    )
    schedule: Literal["linear", "cosine", "constant"] = Field(
        default="linear",
        description="After warmup: linear decay to 0, cosine decay to 0 (half a cosine period), "
        "or constant.",
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
    early_stopping_metric: Literal["accuracy", "macro_f1", "micro_f1", "loss"] = Field(
        default="accuracy",
        description="Validation metric that picks the best weights (causal-lm: loss only).",
    )
    metrics: list[Literal["accuracy", "macro_f1", "micro_f1", "per_class"]] = Field(
        default_factory=lambda: ["accuracy", "macro_f1"],
        description="sequence-classification: metrics in metrics.jsonl and summary.json "
        "(per_class: precision, recall and F1 of every label, in summary.json); loss always.",
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
    heartbeat_timeout_s: Annotated[float, Field(gt=0)] = Field(
        default=60.0,
        description="A rank whose heartbeats (about one a second) stop for this long is "
        "declared stalled: its stacks are saved and the worker group restarts.",
    )
    stall_timeout_s: Annotated[float, Field(gt=0)] | None = Field(
        default=None,
        description="A rank that stays in one phase (data, forward, backward, optimizer, "
        "collective, save, eval) this long is declared stalled; default: 10x the median step "
        "time, at least 300 s. Not below training.heartbeat_timeout_s.",
    )
    collective_timeout_s: Annotated[float, Field(gt=0)] = Field(
        default=600.0,
        description="Timeout of the torch process group's collectives (all-reduce, barrier).",
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

    @model_validator(mode="after")
    def _stall_after_silence(self) -> TrainingConfig:
        if self.stall_timeout_s is not None and self.stall_timeout_s < self.heartbeat_timeout_s:
            raise ValueError(
                f"training.stall_timeout_s: {self.stall_timeout_s:g} is below "
                f"training.heartbeat_timeout_s ({self.heartbeat_timeout_s:g})"
            )
        return self

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

    def zero_buckets(self, hidden_size: int) -> dict[str, int]:
        """DeepSpeed's communication buckets, in elements, scaled to the model (both the workers'
        DeepSpeed config and `ftlaunch plan` use these).

        DeepSpeed's defaults (5e8-element reduce and all-gather buckets, up to 1e9 parameters
        kept gathered) are sized for GPUs with room to spare: below ~1B parameters a ZeRO-3 rank
        would keep the whole model gathered and a gradient bucket as large as the model, so no
        rank would hold less than the full model. As Hugging Face's "auto" values do, buckets are
        hidden_size^2 elements and parameters below 10 x hidden_size stay gathered; at most about
        two transformer blocks (24 x hidden_size^2) are kept gathered between uses.
        """
        square = hidden_size * hidden_size
        buckets = {"reduce_bucket_size": square, "allgather_bucket_size": square}
        if self.zero_stage == 3:
            live = min(24 * square, 10**9)
            buckets |= {
                "stage3_prefetch_bucket_size": square * 9 // 10,
                "stage3_param_persistence_threshold": 10 * hidden_size,
                "stage3_max_live_parameters": live,
                "stage3_max_reuse_distance": live,
            }
        return buckets


class OutputConfig(Section):
    dir: str = Field(
        default="runs/default",
        description="Run directory on the head: model, metrics, checkpoints, summary.",
    )
    keep_last: PositiveInt = Field(
        default=2, description="Complete checkpoints kept (on the head, or in checkpoint_uri)."
    )
    checkpoint_uri: str | None = Field(
        default=None,
        description="Write checkpoints to this object store instead of streaming them to the "
        "head (s3://bucket/prefix, gs://..., any pyarrow.fs URI; credentials and endpoint from "
        "the environment or the URI's query, e.g. ?endpoint_override=host:port&scheme=http; "
        "list the credential variables in cluster.secret_env for the workers). Every rank "
        "uploads its files there, the head commits the manifest there, and resume and export "
        "read from it. Use one URI per output.dir.",
    )
    mlflow_uri: str | None = Field(
        default=None,
        description="MLflow tracking URI (http://..., sqlite:///...); the head logs metrics there.",
    )
    mlflow_experiment: str | None = Field(
        default=None, description="MLflow experiment name; default: the job's name."
    )
    wandb_project: str | None = Field(
        default=None,
        description="Weights & Biases project; the head logs the metrics stream there (pip "
        "install 'ftlaunch[wandb]'). Online mode needs WANDB_API_KEY in cluster.secret_env.",
    )
    wandb_mode: Literal["online", "offline"] = Field(
        default="online",
        description="online: sync to the W&B server; offline: write the run under "
        "output.dir/wandb for `wandb sync` later.",
    )

    @field_validator("checkpoint_uri")
    @classmethod
    def _checkpoint_uri_is_a_uri(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"[a-z][a-z0-9+.-]*://.+", value):
            raise ValueError("must be a URI such as s3://bucket/prefix")
        return value


class JobConfig(Section):
    name: str = Field(default="ftlaunch-job", description="Job name: prefixes run ids.")
    model: ModelConfig = Field(description="The pretrained model and its task head.")
    data: DataConfig = Field(description="Where the splits are and how they are tokenized.")
    peft: PeftConfig = Field(
        default=NoPeft(), description="Parameter-efficient tuning; method none trains all weights."
    )
    optim: OptimConfig = Field(default=OptimConfig(), description="The optimizer and its schedule.")
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

    @model_validator(mode="after")
    def _validation_split_is_one_thing(self) -> JobConfig:
        d = self.data
        if d.validation is None and d.validation_split is None:
            raise ValueError(
                "data.validation: required field is missing (or set data.validation_split to "
                "carve a validation split from data.train)"
            )
        if d.validation is not None and d.validation_split is not None:
            raise ValueError(
                "data.validation_split: data.validation is given too; use one of the two"
            )
        return self

    @model_validator(mode="after")
    def _wandb_key_travels_as_a_secret(self) -> JobConfig:
        o = self.output
        online = o.wandb_project is not None and o.wandb_mode == "online"
        if online and WANDB_KEY not in self.cluster.secret_env:
            raise ValueError(
                f"output.wandb_mode: online needs {WANDB_KEY} listed in cluster.secret_env "
                "(it travels sealed, never in config.yaml or job info); or use "
                "output.wandb_mode: offline"
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
        if self.model.attn_implementation == "flash_attention_2" and (
            not self.cluster.uses_gpu() or self.training.precision == "fp32"
        ):
            raise ValueError(
                "model.attn_implementation: flash_attention_2 runs on GPUs in bf16 or fp16 "
                "(cluster.gpus_per_worker > 0 and training.precision bf16/fp16); use sdpa"
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
