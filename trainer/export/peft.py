"""Export a PEFT run's checkpoint: the trained tensors on top of the base model from model.path.

The checkpoint holds only what trained (adapter and classification head, see
trainer/loop/checkpoints.py),
so the peft model is rebuilt on the base exactly as the workers built it, the trained tensors are
loaded over it, and the result is written merged (a plain transformers model) or as the adapter.
Either way the directory is reloaded and checked before returning.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from trainer.config.spec import RunSpec
from trainer.export.readers import Tensors
from trainer.export.save import save_adapter, write_tokenizer_and_labels
from trainer.formats.checkpoints import CorruptCheckpointError
from trainer.model.build import build_causal_lm, build_classifier, merged_for_export
from trainer.model.peft import TaskModel


def load_trained(model: torch.nn.Module, tensors: Tensors) -> None:
    """Copy every trainable parameter's tensor from the checkpoint into `model`.

    Raises:
        CorruptCheckpointError: a trainable parameter is missing or has another shape.
    """
    params = dict(model.named_parameters())
    trainable = [name for name, p in params.items() if p.requires_grad]
    missing = [name for name in trainable if name not in tensors]
    if missing:
        raise CorruptCheckpointError(
            f"checkpoint lacks {len(missing)} trained tensors, e.g. {missing[:3]}"
        )
    with torch.no_grad():
        for name, (shape, produce) in tensors.items():
            if name not in params:
                raise CorruptCheckpointError(f"checkpoint tensor {name} is not in the model")
            if params[name].shape != shape:
                raise CorruptCheckpointError(
                    f"{name}: shape {tuple(shape)} != model's {tuple(params[name].shape)}"
                )
            params[name].copy_(produce())


def export_peft(
    tensors: Tensors,
    spec: RunSpec,
    out_dir: Path,
    adapter_only: bool,
) -> Path:
    peft = spec.job.peft
    if spec.job.model.is_causal_lm():
        return _export_causal_peft(tensors, spec, out_dir, adapter_only)
    torch.manual_seed(spec.job.training.seed)  # the unused original head, as the workers had it
    model = build_classifier(spec.model_dir, spec.label_names, peft)
    load_trained(model, tensors)
    model.eval()
    if adapter_only or not peft.can_merge():
        save_adapter(model, spec, out_dir)
        write_tokenizer_and_labels(spec, out_dir)
        _check_adapter_reloads(model, spec, out_dir)
    else:
        merged_for_export(model, peft).save_pretrained(str(out_dir), safe_serialization=True)
        write_tokenizer_and_labels(spec, out_dir)
        check_reloads(out_dir, causal=False)
    return out_dir


def _export_causal_peft(
    tensors: Tensors,
    spec: RunSpec,
    out_dir: Path,
    adapter_only: bool,
) -> Path:
    """A decoder has no label map; the adapter or the merged model, then the tokenizer."""
    from transformers import AutoTokenizer

    peft = spec.job.peft
    model = build_causal_lm(spec.model_dir, peft)
    load_trained(model, tensors)
    model.eval()
    if adapter_only or not peft.can_merge():
        model.save_pretrained(str(out_dir), safe_serialization=True)
    else:
        merged_for_export(model, peft).save_pretrained(str(out_dir), safe_serialization=True)
        check_reloads(out_dir, causal=True)
    AutoTokenizer.from_pretrained(spec.model_dir).save_pretrained(out_dir)
    return out_dir


def reload_adapter(base_dir: str, num_labels: int, adapter_dir: Path) -> torch.nn.Module:
    """The documented way to load an adapter export (also used by tests)."""
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification

    base = AutoModelForSequenceClassification.from_pretrained(base_dir, num_labels=num_labels)
    return PeftModel.from_pretrained(base, adapter_dir).eval()


def _check_adapter_reloads(model: TaskModel, spec: RunSpec, out_dir: Path) -> None:
    reloaded = dict(
        reload_adapter(spec.model_dir, len(spec.label_names), out_dir).named_parameters()
    )
    for name, param in model.named_parameters():
        if param.requires_grad and not torch.equal(reloaded[name], param):
            raise CorruptCheckpointError(f"{out_dir}: adapter tensor {name} does not reload equal")


def check_reloads(out_dir: Path, causal: bool) -> None:
    """Raise CorruptCheckpointError unless transformers reloads `out_dir` with no missing,
    unexpected or mismatched weights (shared by full and PEFT exports)."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    auto = AutoModelForCausalLM if causal else AutoModelForSequenceClassification
    loaded: Any = auto.from_pretrained(out_dir, output_loading_info=True)
    _, info = loaded
    problems = {
        k: v
        for k, v in info.items()
        if v and k in ("missing_keys", "unexpected_keys", "mismatched_keys")
    }
    if problems:
        raise CorruptCheckpointError(
            f"{out_dir}: exported model does not reload cleanly: {problems}"
        )
