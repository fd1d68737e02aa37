"""Write the trained model as a plain Hugging Face directory (safetensors, tokenizer, label map)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import AutoTokenizer

from trainer.config.spec import RunSpec
from trainer.model import build_causal_lm, build_classifier, merged_for_export


def save_classifier(state: dict[str, torch.Tensor], spec: RunSpec, out_dir: Path) -> Path:
    """Rebuild the architecture, load the consolidated weights strictly, fold LoRA in, save.

    Loading strictly means a key mismatch fails here, on the worker, instead of producing a model
    that silently reloads with a random head.
    """
    model = build_classifier(spec.model_dir, spec.label_names, spec.job.peft)
    model.load_state_dict(state, strict=True)
    plain = merged_for_export(model)
    plain.save_pretrained(out_dir, safe_serialization=True)
    AutoTokenizer.from_pretrained(spec.model_dir).save_pretrained(out_dir)
    label_map = {
        "labels": spec.label_names,
        "label2id": {n: i for i, n in enumerate(spec.label_names)},
    }
    (out_dir / "label_map.json").write_text(json.dumps(label_map, indent=2) + "\n")
    return out_dir


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
    plain = merged_for_export(model)
    plain.save_pretrained(out_dir, safe_serialization=True)
    AutoTokenizer.from_pretrained(spec.model_dir).save_pretrained(out_dir)
    return out_dir
