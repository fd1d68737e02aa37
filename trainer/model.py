"""Build the task model from a local Hugging Face directory, optionally wrapped with LoRA."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    PreTrainedModel,
)

from trainer.config.schema import PeftConfig


def build_classifier(
    model_dir: str | Path, label_names: list[str], peft: PeftConfig
) -> torch.nn.Module:
    """The pretrained encoder with a fresh classification head for `label_names`.

    The head is initialised from torch's global RNG, so callers seed it first; every rank then
    starts from identical weights.
    """
    config = AutoConfig.from_pretrained(
        model_dir,
        num_labels=len(label_names),
        id2label=dict(enumerate(label_names)),
        label2id={name: i for i, name in enumerate(label_names)},
    )
    model = AutoModelForSequenceClassification.from_pretrained(
        model_dir, config=config, dtype=torch.float32
    )
    return apply_peft(model, peft) if peft.method != "none" else model


def build_causal_lm(model_dir: str | Path, peft: PeftConfig) -> torch.nn.Module:
    """The pretrained decoder with its language-model head, optionally wrapped with LoRA."""
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    return apply_peft(model, peft, task_type="CAUSAL_LM") if peft.method != "none" else model


def apply_peft(
    model: PreTrainedModel, peft: PeftConfig, task_type: str = "SEQ_CLS"
) -> torch.nn.Module:
    from peft import LoraConfig, TaskType, get_peft_model

    lora = LoraConfig(
        task_type=TaskType[task_type],  # SEQ_CLS also keeps the new classifier head trainable
        r=peft.r,
        lora_alpha=peft.alpha,
        lora_dropout=peft.dropout,
        target_modules=peft.target_modules,
    )
    return get_peft_model(model, lora)


def count_parameters(model: torch.nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts; ZeRO-3 partitions report their full size via ds_numel."""
    trainable = total = 0
    for param in model.parameters():
        numel = getattr(param, "ds_numel", param.numel())
        total += numel
        trainable += numel if param.requires_grad else 0
    return trainable, total


def merged_for_export(model: torch.nn.Module) -> PreTrainedModel:
    """A plain transformers model: LoRA weights folded into the base, wrappers removed."""
    if hasattr(model, "merge_and_unload"):
        return model.merge_and_unload()
    return model
