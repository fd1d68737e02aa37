"""Build the task model from a local Hugging Face directory, optionally wrapped by a PEFT method."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, cast

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    PretrainedConfig,
    PreTrainedModel,
)

from trainer.config.peft import NoPeft, PeftConfig
from trainer.model.peft import TaskModel, apply_peft

if TYPE_CHECKING:
    from peft import PeftModel


def build_classifier(
    model_dir: str | Path,
    label_names: list[str],
    peft: PeftConfig = NoPeft(),
    gradient_checkpointing: bool = False,
) -> TaskModel:
    """The pretrained encoder with a fresh classification head for `label_names`.

    The head is initialised from torch's global RNG, so callers seed it first; every rank then
    starts from identical weights.
    """
    model = AutoModelForSequenceClassification.from_pretrained(
        model_dir, config=classifier_config(model_dir, label_names), dtype=torch.float32
    )
    _enable_gradient_checkpointing(model, gradient_checkpointing)
    return apply_peft(model, peft, "sequence-classification", model_dir)


def classifier_config(model_dir: str | Path, label_names: list[str]) -> PretrainedConfig:
    """The base model's config with the label set of this run (what the head is built for)."""
    return AutoConfig.from_pretrained(
        model_dir,
        num_labels=len(label_names),
        id2label=dict(enumerate(label_names)),
        label2id={name: i for i, name in enumerate(label_names)},
    )


def build_causal_lm(
    model_dir: str | Path, peft: PeftConfig = NoPeft(), gradient_checkpointing: bool = False
) -> TaskModel:
    """The pretrained decoder with its language-model head, optionally wrapped by a PEFT method."""
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    _enable_gradient_checkpointing(model, gradient_checkpointing)
    return apply_peft(model, peft, "causal-lm", model_dir)


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
