"""Write the trained model as a plain Hugging Face directory (safetensors, tokenizer, label map).

Methods that merge (none, LoRA, adapter/LoHa, IA3) give a plain model. Prompt and prefix tuning
cannot merge (their virtual tokens are an input, not a weight), so they give the peft adapter,
loadable with `PeftModel.from_pretrained(base, dir)`, and a note saying so.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoTokenizer

from trainer.config.peft import PeftConfig
from trainer.config.spec import RunSpec
from trainer.formats.rundir import ADAPTER_NOTE, LABEL_MAP_FILE, label_map_json
from trainer.model.build import build_causal_lm, build_classifier, merged_for_export
from trainer.model.peft import TaskModel


def save_classifier(state: dict[str, torch.Tensor], spec: RunSpec, out_dir: Path) -> Path:
    """Rebuild the architecture, load the consolidated weights strictly, fold the adapter in, save.

    Loading strictly means a key mismatch fails here, on the worker, instead of producing a model
    that silently reloads with a random head.
    """
    model = build_classifier(spec.model_dir, spec.label_names, spec.job.peft)
    model.load_state_dict(state, strict=True)
    if spec.job.peft.can_merge() or spec.job.peft.method == "none":
        merged_for_export(model, spec.job.peft).save_pretrained(
            str(out_dir), safe_serialization=True
        )
    else:
        save_adapter(model, spec, out_dir)
    write_tokenizer_and_labels(spec, out_dir)
    return out_dir


def save_adapter(model: TaskModel, spec: RunSpec, out_dir: Path) -> None:
    """adapter_config.json + adapter_model.safetensors (adapter and classifier head) + a note."""
    model.save_pretrained(str(out_dir), safe_serialization=True)
    (out_dir / ADAPTER_NOTE).write_text(
        adapter_note(spec.job.peft, spec.model_dir, spec.label_names)
    )


def adapter_note(peft: PeftConfig, base_dir: str, labels: list[str]) -> str:
    why = (
        "it cannot be merged into the base weights (virtual tokens are an input)"
        if peft.is_prompt_learning()
        else "`--adapter-only` was asked for"
    )
    return (
        f"# A peft adapter ({peft.method}), not a full model\n\n"
        f"This directory holds only the trained adapter and classification head: {why}.\n"
        "Load it on top of its base model:\n\n"
        "```python\n"
        "from peft import PeftModel\n"
        "from transformers import AutoModelForSequenceClassification\n"
        f"base = AutoModelForSequenceClassification.from_pretrained({base_dir!r}, num_labels={len(labels)})\n"
        "model = PeftModel.from_pretrained(base, THIS_DIRECTORY)\n"
        f"```\n\nLabels (by id) are in {LABEL_MAP_FILE}.\n"
    )


def write_tokenizer_and_labels(spec: RunSpec, out_dir: Path) -> None:
    AutoTokenizer.from_pretrained(spec.model_dir).save_pretrained(out_dir)
    (out_dir / LABEL_MAP_FILE).write_text(label_map_json(spec.label_names))


def save_causal_lm(state: dict[str, torch.Tensor], spec: RunSpec, out_dir: Path) -> Path:
    """Like save_classifier for a decoder. A consolidated ZeRO-3 state holds each parameter once,
    so a tied output embedding may be absent; any other missing key is an error."""
    model = build_causal_lm(spec.model_dir, spec.job.peft)
    missing = model.load_state_dict(state, strict=False).missing_keys
    params = dict(model.named_parameters(remove_duplicate=False))
    present = {id(params[k]) for k in state if k in params}
    untied = [k for k in missing if k not in params or id(params[k]) not in present]
    if untied:
        raise RuntimeError(f"consolidated state lacks {untied[:5]}")
    merged_for_export(model, spec.job.peft).save_pretrained(str(out_dir), safe_serialization=True)
    AutoTokenizer.from_pretrained(spec.model_dir).save_pretrained(out_dir)
    return out_dir
