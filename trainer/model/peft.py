"""Turn the `peft` section into a peft config and wrap the model with it.

The one place that maps `model.task` to peft's TaskType, so a new task (causal-lm) only adds a
row here. Every peft rejection of the config surfaces as UnsupportedConfigError naming the field.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, TypeAlias

from trainer.config.errors import UnsupportedConfigError
from trainer.config.peft import (
    AdapterPeft,
    Ia3Peft,
    LoraPeft,
    PeftConfig,
    PrefixTuningPeft,
    PromptTuningPeft,
)

if TYPE_CHECKING:
    from peft import PeftModel
    from transformers import PreTrainedModel

# A transformers model, or one wrapped by a peft method: both save_pretrained; the wrapper
# forwards everything else to the model it wraps.
TaskModel: TypeAlias = "PreTrainedModel | PeftModel"

# model.task -> peft.TaskType member name. For SEQ_CLS, peft keeps the new head trainable
# (modules_to_save) and saves it with the adapter.
TASK_TYPES = {"sequence-classification": "SEQ_CLS", "causal-lm": "CAUSAL_LM"}


def task_type(task: str):
    from peft import TaskType

    try:
        return TaskType[TASK_TYPES[task]]
    except KeyError:
        raise UnsupportedConfigError(f"model.task: {task!r} has no PEFT task mapping") from None


def peft_config_for(cfg: PeftConfig, task: str, model_dir: str | Path):
    """The peft library's config for our validated section (pure apart from the import)."""
    import peft

    kind = task_type(task)
    if isinstance(cfg, LoraPeft):
        return peft.LoraConfig(
            r=cfg.r,
            lora_alpha=cfg.alpha,  # pyright: ignore[reportArgumentType] (peft annotates int; a float scale alpha/r works and is what LoRA means)
            lora_dropout=cfg.dropout,
            target_modules=cfg.target_modules,
            use_dora=cfg.use_dora,
            use_rslora=cfg.use_rslora,
            task_type=kind,
        )
    if isinstance(cfg, AdapterPeft):
        return peft.LoHaConfig(
            r=cfg.r,
            alpha=cfg.alpha,  # pyright: ignore[reportArgumentType] (as lora_alpha above)
            rank_dropout=cfg.rank_dropout,
            module_dropout=cfg.module_dropout,
            target_modules=cfg.target_modules,
            task_type=kind,
        )
    if isinstance(cfg, Ia3Peft):
        return peft.IA3Config(
            target_modules=cfg.target_modules,
            feedforward_modules=cfg.feedforward_modules,
            task_type=kind,
        )
    if isinstance(cfg, PromptTuningPeft):
        text = {}
        if cfg.init_text:
            text = {
                "prompt_tuning_init": peft.PromptTuningInit.TEXT,
                "prompt_tuning_init_text": cfg.init_text,
                "tokenizer_name_or_path": str(model_dir),
            }
        return peft.PromptTuningConfig(
            num_virtual_tokens=cfg.num_virtual_tokens, **text, task_type=kind
        )
    if isinstance(cfg, PrefixTuningPeft):
        return peft.PrefixTuningConfig(
            num_virtual_tokens=cfg.num_virtual_tokens,
            prefix_projection=cfg.projection,
            encoder_hidden_size=cfg.projection_hidden_size,  # pyright: ignore[reportArgumentType] (None: peft uses the model's hidden size)
            task_type=kind,
        )
    raise UnsupportedConfigError(f"peft.method: {cfg.method!r} has no peft mapping")


def apply_peft(
    model: PreTrainedModel, cfg: PeftConfig, task: str, model_dir: str | Path
) -> TaskModel:
    """Wrap `model` (base frozen, adapter trainable); the model itself when method is none."""
    if cfg.method == "none":
        return model
    from peft import get_peft_model

    config = peft_config_for(cfg, task, model_dir)
    try:
        return get_peft_model(model, config)
    except (ValueError, TypeError) as exc:  # peft's words for a target it cannot adapt
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        field = "peft.target_modules" if "arget" in first else f"peft ({cfg.method})"
        raise UnsupportedConfigError(f"{field}: {first}") from None
