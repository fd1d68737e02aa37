"""Build the task model from a local Hugging Face directory, optionally wrapped by a PEFT method.

How a rank builds it depends on the engine (`LoadPlan`, decided by `load_plan`):

- DeepSpeed ZeRO-3: constructed partitioned. transformers' DeepSpeed integration runs the
  constructor inside `deepspeed.zero.Init` while an `HfDeepSpeedConfig` is alive, so each rank
  allocates only its partition, and `from_pretrained` copies the checkpoint in one module at a
  time (gathered, filled on rank 0, partitioned again). Without it every rank would first build
  the whole model in host RAM.
- FSDP (Accelerate): rank 0 loads the weights; the other ranks build the same modules with their
  parameters on the meta device (buffers real), and Accelerate's RAM-efficient loading shards
  rank 0's weights to them after `fully_shard`.
- DeepSpeed trains bf16/fp16 with fp32 master weights kept by its optimizer and casts the module
  to the training dtype itself, so the weights are loaded in that dtype from the start (the same
  values, without a transient fp32 copy). DDP and FSDP keep fp32 parameters (they are the master
  weights there).
"""

from __future__ import annotations

import contextlib
import importlib.util
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    PretrainedConfig,
    PreTrainedModel,
)

from trainer.config.errors import UnsupportedConfigError
from trainer.config.peft import NoPeft, PeftConfig
from trainer.config.schema import JobConfig
from trainer.model.peft import TaskModel, apply_peft

if TYPE_CHECKING:
    from peft import PeftModel

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class LoadPlan:
    """How this rank builds the model (pure data). The default is a plain fp32 load (exports)."""

    dtype: str = "fp32"  # a training.precision value
    zero3_config: dict[str, Any] | None = None  # the DeepSpeed config: construct partitioned
    empty_params: bool = False  # parameters on the meta device; rank 0 sends the weights (FSDP)
    attn_implementation: str | None = None


def load_plan(job: JobConfig, rank: int, deepspeed_config: dict[str, Any] | None) -> LoadPlan:
    """Pure: how rank `rank` builds the model for `job` (`deepspeed_config`: the engine's config
    when DeepSpeed runs, else None)."""
    e = job.engine
    runs_deepspeed = e.runs_deepspeed() and deepspeed_config is not None
    return LoadPlan(
        dtype=job.training.precision if runs_deepspeed else "fp32",
        zero3_config=deepspeed_config if runs_deepspeed and e.zero_stage == 3 else None,
        empty_params=e.strategy == "fsdp" and rank != 0,
        attn_implementation=job.model.attn_implementation,
    )


def read_hidden_size(model_dir: str | Path) -> int | None:
    """config.json's hidden size (any spelling transformers maps to `hidden_size`)."""
    value = getattr(AutoConfig.from_pretrained(model_dir), "hidden_size", None)
    return value if isinstance(value, int) else None


def check_attn_implementation(name: str | None) -> None:
    """Raise UnsupportedConfigError if this worker cannot run the asked attention kernel."""
    if name != "flash_attention_2":
        return
    if importlib.util.find_spec("flash_attn") is None:
        raise UnsupportedConfigError(
            "model.attn_implementation: flash_attention_2 needs the flash-attn package on every "
            "worker (pip install flash-attn); use sdpa"
        )
    if not torch.cuda.is_available():
        raise UnsupportedConfigError(
            "model.attn_implementation: flash_attention_2 needs a GPU and this worker has none"
        )


def build_classifier(
    model_dir: str | Path,
    label_names: list[str],
    peft: PeftConfig = NoPeft(),
    gradient_checkpointing: bool = False,
    load: LoadPlan = LoadPlan(),
) -> TaskModel:
    """The pretrained encoder with a fresh classification head for `label_names`.

    The head is initialised from torch's global RNG, so callers seed it first; every rank then
    starts from identical weights (under ZeRO-3 rank 0 initialises it and the others receive it).
    """
    config = classifier_config(model_dir, label_names)
    model = _load(AutoModelForSequenceClassification, model_dir, config, load)
    _enable_gradient_checkpointing(model, gradient_checkpointing)
    return _in_dtype(apply_peft(model, peft, "sequence-classification", model_dir), load.dtype)


def classifier_config(model_dir: str | Path, label_names: list[str]) -> PretrainedConfig:
    """The base model's config with the label set of this run (what the head is built for)."""
    return AutoConfig.from_pretrained(
        model_dir,
        num_labels=len(label_names),
        id2label=dict(enumerate(label_names)),
        label2id={name: i for i, name in enumerate(label_names)},
    )


def build_causal_lm(
    model_dir: str | Path,
    peft: PeftConfig = NoPeft(),
    gradient_checkpointing: bool = False,
    load: LoadPlan = LoadPlan(),
) -> TaskModel:
    """The pretrained decoder with its language-model head, optionally wrapped by a PEFT method."""
    model = _load(AutoModelForCausalLM, model_dir, AutoConfig.from_pretrained(model_dir), load)
    _enable_gradient_checkpointing(model, gradient_checkpointing)
    return _in_dtype(apply_peft(model, peft, "causal-lm", model_dir), load.dtype)


def _in_dtype(model: TaskModel, precision: str) -> TaskModel:
    """Every floating parameter in the training dtype. peft creates adapters in fp32 on a bf16
    base; DeepSpeed's engine casts a whole module it is given, but not parameters that ZeRO-3
    already partitioned, and partitions of one group must share a dtype."""
    dtype = DTYPES[precision]
    if dtype is torch.float32:
        return model
    for param in model.parameters():
        if param.is_floating_point() and param.dtype != dtype and not hasattr(param, "ds_id"):
            param.data = param.data.to(dtype)
    return model


def _load(
    auto_class: Any, model_dir: str | Path, config: PretrainedConfig, load: LoadPlan
) -> PreTrainedModel:
    """`from_pretrained` as `load` says: partitioned (ZeRO-3), empty (FSDP, ranks > 0) or whole."""
    kwargs: dict[str, Any] = {"config": config, "dtype": DTYPES[load.dtype]}
    if load.attn_implementation is not None:
        kwargs["attn_implementation"] = load.attn_implementation
    if load.empty_params:
        return _empty_like_pretrained(auto_class, config, kwargs)
    with _partitioned_construction(load.zero3_config):
        return auto_class.from_pretrained(model_dir, **kwargs)


def _empty_like_pretrained(
    auto_class: Any, config: PretrainedConfig, kwargs: dict[str, Any]
) -> PreTrainedModel:
    """The model's modules with parameters on the meta device and real buffers (computed in the
    constructors, e.g. position ids; they are not in the state dict rank 0 sends)."""
    from accelerate import init_empty_weights

    options = {k: v for k, v in kwargs.items() if k != "config"}
    with init_empty_weights(include_buffers=False):
        return auto_class.from_config(config, **options)


@contextlib.contextmanager
def _partitioned_construction(zero3_config: dict[str, Any] | None) -> Iterator[None]:
    """While open, transformers builds models inside `deepspeed.zero.Init` (ZeRO-3). Closed right
    after the build: a later model (rank 0 rebuilding one alone to save it) must not wait for the
    other ranks in a collective."""
    if zero3_config is None:
        yield
        return
    import deepspeed
    from transformers.integrations.deepspeed import HfDeepSpeedConfig, unset_hf_deepspeed_config

    # zero.Init reads the world size from DeepSpeed's communication layer, which otherwise exists
    # only once deepspeed.initialize runs; it wraps the process group that is already up.
    deepspeed.init_distributed()
    # transformers keeps only a weak reference to this object: it must stay alive for the build.
    keep_alive = HfDeepSpeedConfig(zero3_config)
    try:
        yield
    finally:
        unset_hf_deepspeed_config()
        del keep_alive


def _enable_gradient_checkpointing(model: PreTrainedModel, enabled: bool) -> None:
    if enabled:
        # Non-reentrant checkpointing needs no input that requires grad, so it also works when
        # PEFT freezes the embeddings.
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def count_parameters(model: torch.nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts; ZeRO-3 partitions report their full size via ds_numel."""
    trainable = total = 0
    for param in model.parameters():
        numel = getattr(param, "ds_numel", param.numel())
        total += numel
        trainable += numel if param.requires_grad else 0
    return trainable, total


def merged_for_export(model: TaskModel, peft: PeftConfig) -> TaskModel:
    """A plain transformers model: the adapter folded into the base, wrappers removed.

    Only for methods that can merge (see PeftConfig.can_merge); prompt learning keeps its wrapper.
    """
    if not peft.can_merge():
        return model
    return cast("PeftModel", model).merge_and_unload()
