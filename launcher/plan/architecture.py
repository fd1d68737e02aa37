"""The model's weights, by name and shape, without loading them.

When the safetensors files are there, their header is the truth: names, shapes and the stored
dtype, exact for any architecture. Without weights, `config.json` is expanded into the same
name -> shape table for the families written out below (the state dict transformers would
build). The rest of the planner only sees that table, so counting, PEFT targets and the largest
block work the same either way.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from launcher.errors import UserError
from launcher.peft_targets import read_weight_header

Shapes = dict[str, list[int]]

# Heads a task adds on top of a checkpoint, and heads of other tasks a checkpoint may carry.
LM_HEADS = ("lm_head.", "cls.")
DTYPE_BYTES = {"F64": 8, "F32": 4, "BF16": 2, "F16": 2, "F8_E4M3": 1, "F8_E5M2": 1, "I8": 1}


@dataclass(frozen=True)
class Architecture:
    """What the planner needs to know about the model of a job."""

    model_type: str
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    weights: Shapes  # the task model's parameters (head included), name -> shape
    counted_from: str  # "safetensors header" or "config.json"
    checkpoint_bytes: int  # the weights as stored (what rank 0 reads while loading)

    @property
    def params(self) -> int:
        return sum(math.prod(shape) for shape in self.weights.values())

    def block_params(self) -> int:
        """Parameters of the largest repeated block (one transformer layer)."""
        blocks: dict[str, int] = {}
        for name, shape in self.weights.items():
            key = _block_key(name)
            if key is not None:
                blocks[key] = blocks.get(key, 0) + math.prod(shape)
        return max(blocks.values(), default=self.params)

    def largest_tensor(self) -> int:
        return max((math.prod(s) for s in self.weights.values()), default=0)


def read_architecture(model_dir: Path, task: str, num_labels: int) -> Architecture:
    """The architecture of `model_dir` as trained for `task` (a new head over `num_labels`).

    Raises:
        UserError: no or unreadable config.json, or a size that cannot be derived (naming the
            missing config key) when there are no weights to count.
    """
    config = _read_config(model_dir / "config.json")
    header = read_weight_header(model_dir)
    family = _family(config) if header is None else None
    dims = _dimensions(config, need_all=header is None)
    if header is not None:
        shapes = {name: entry["shape"] for name, entry in header.items()}
        weights = _task_weights(shapes, config, task, num_labels)
        stored = sum(
            math.prod(e["shape"]) * DTYPE_BYTES.get(e["dtype"], 4) for e in header.values()
        )
        counted_from = "safetensors header"
    else:
        base = family(config) if family else {}
        weights = _task_weights(base, config, task, num_labels)
        stored = _config_dtype_bytes(config) * sum(math.prod(s) for s in base.values())
        counted_from = "config.json"
    return Architecture(**dims, weights=weights, counted_from=counted_from, checkpoint_bytes=stored)


def _read_config(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise UserError(f"model.path: {path.parent} has no config.json")
    try:
        config = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise UserError(f"model.path: {path} is not valid JSON ({exc})") from None
    if not isinstance(config, dict) or "model_type" not in config:
        raise UserError(f"model.path: {path} has no model_type; not a Hugging Face model config")
    return config


def _config_dtype_bytes(config: dict[str, Any]) -> int:
    """Bytes per stored weight as config.json declares them (`torch_dtype`, or `dtype` in newer
    files); fp32 when it does not say."""
    declared = str(config.get("dtype") or config.get("torch_dtype") or "float32")
    return 2 if declared in ("bfloat16", "float16", "half") else 4


# config key -> the names architectures use for it (transformers' attribute_map, in effect)
_ALIASES = {
    "hidden_size": ("hidden_size", "n_embd", "d_model", "dim"),
    "num_hidden_layers": ("num_hidden_layers", "n_layer", "num_layers", "n_layers"),
    "num_attention_heads": ("num_attention_heads", "n_head", "num_heads", "n_heads"),
    "vocab_size": ("vocab_size",),
}


def _get(config: dict[str, Any], key: str, required: bool) -> int | None:
    for name in _ALIASES.get(key, (key,)):
        if isinstance(config.get(name), int):
            return config[name]
    if required:
        raise UserError(
            f"model.path: config.json has no {key!r}, so the model's size cannot be derived "
            "(put the model's safetensors weights next to it to count them instead)"
        )
    return None


def _dimensions(config: dict[str, Any], need_all: bool) -> dict[str, Any]:
    hidden = _get(config, "hidden_size", required=True) or 0
    heads = _get(config, "num_attention_heads", required=True) or 1
    layers = _get(config, "num_hidden_layers", required=True) or 0
    inter = _get(config, "intermediate_size", False) or config.get("n_inner") or 4 * hidden
    head_dim = config.get("head_dim") or hidden // heads
    return {
        "model_type": str(config["model_type"]),
        "hidden": hidden,
        "layers": layers,
        "heads": heads,
        "kv_heads": config.get("num_key_value_heads") or heads,
        "head_dim": head_dim,
        "intermediate": int(inter),
        "vocab": _get(config, "vocab_size", required=need_all) or 0,
    }


def _task_weights(base: Shapes, config: dict[str, Any], task: str, num_labels: int) -> Shapes:
    """The parameters of the model the job trains: the checkpoint's, less heads of other tasks,
    plus the head this task adds (a new classifier, or an untied output embedding)."""
    hidden = _get(config, "hidden_size", required=True) or 0
    vocab = _get(config, "vocab_size", required=False) or 0
    if task == "causal-lm":
        weights = {k: v for k, v in base.items() if not k.startswith("cls.")}
        tied = config.get("tie_word_embeddings", True)
        if not tied and not any(k.startswith("lm_head.") for k in weights):
            weights["lm_head.weight"] = [vocab, hidden]
        return weights
    weights = {k: v for k, v in base.items() if not k.startswith(LM_HEADS)}
    if config["model_type"] in ("bert", "roberta"):  # dense classifier with a bias
        return weights | {
            "classifier.weight": [num_labels, hidden],
            "classifier.bias": [num_labels],
        }
    return weights | {"score.weight": [num_labels, hidden]}  # decoders: a bias-free score head


def _family(config: dict[str, Any]) -> Callable[[dict[str, Any]], Shapes]:
    model_type = config["model_type"]
    for family, types in FAMILIES.items():
        if model_type in types:
            return family
    known = ", ".join(t for types in FAMILIES.values() for t in types)
    raise UserError(
        f"model.path: config.json has model_type {model_type!r}, whose size the planner cannot "
        f"derive from the config alone (it can for: {known}); put the model's safetensors "
        "weights next to it to count them"
    )


def _llama_like(c: dict[str, Any]) -> Shapes:
    """Llama, Mistral, Qwen2/3: grouped-query attention, gated MLP, RMSNorm."""
    h, inter, vocab = (
        _get(c, k, True) or 0 for k in ("hidden_size", "intermediate_size", "vocab_size")
    )
    heads = _get(c, "num_attention_heads", True) or 1
    kv, hd = c.get("num_key_value_heads") or heads, c.get("head_dim") or h // heads
    qkv_bias = c.get("attention_bias", False) or c["model_type"] == "qwen2"
    out_bias, mlp_bias = c.get("attention_bias", False), c.get("mlp_bias", False)
    w: Shapes = {"model.embed_tokens.weight": [vocab, h], "model.norm.weight": [h]}
    for i in range(_get(c, "num_hidden_layers", True) or 0):
        p = f"model.layers.{i}."
        for name, rows, bias in (
            ("q", heads * hd, qkv_bias),
            ("k", kv * hd, qkv_bias),
            ("v", kv * hd, qkv_bias),
        ):
            _linear(w, f"{p}self_attn.{name}_proj", h, rows, bias)
        _linear(w, f"{p}self_attn.o_proj", heads * hd, h, out_bias)
        for name in ("gate", "up"):
            _linear(w, f"{p}mlp.{name}_proj", h, inter, mlp_bias)
        _linear(w, f"{p}mlp.down_proj", inter, h, mlp_bias)
        w[f"{p}input_layernorm.weight"] = [h]
        w[f"{p}post_attention_layernorm.weight"] = [h]
        if c["model_type"] == "qwen3":
            w[f"{p}self_attn.q_norm.weight"] = w[f"{p}self_attn.k_norm.weight"] = [hd]
    if not c.get("tie_word_embeddings", False):
        w["lm_head.weight"] = [vocab, h]
    return w


def _bert_like(c: dict[str, Any]) -> Shapes:
    h, inter, vocab = (
        _get(c, k, True) or 0 for k in ("hidden_size", "intermediate_size", "vocab_size")
    )
    positions = _get(c, "max_position_embeddings", True) or 0
    w: Shapes = {
        "embeddings.word_embeddings.weight": [vocab, h],
        "embeddings.position_embeddings.weight": [positions, h],
        "embeddings.token_type_embeddings.weight": [c.get("type_vocab_size", 2), h],
    }
    _norm(w, "embeddings.LayerNorm", h)
    for i in range(_get(c, "num_hidden_layers", True) or 0):
        p = f"encoder.layer.{i}."
        for name in ("query", "key", "value"):
            _linear(w, f"{p}attention.self.{name}", h, h, True)
        _linear(w, f"{p}attention.output.dense", h, h, True)
        _norm(w, f"{p}attention.output.LayerNorm", h)
        _linear(w, f"{p}intermediate.dense", h, inter, True)
        _linear(w, f"{p}output.dense", inter, h, True)
        _norm(w, f"{p}output.LayerNorm", h)
    _linear(w, "pooler.dense", h, h, True)
    return w


def _gpt2(c: dict[str, Any]) -> Shapes:
    h, vocab = _get(c, "hidden_size", True) or 0, _get(c, "vocab_size", True) or 0
    inter = c.get("n_inner") or 4 * h
    w: Shapes = {"wte.weight": [vocab, h], "wpe.weight": [_get(c, "n_positions", True) or 0, h]}
    for i in range(_get(c, "num_hidden_layers", True) or 0):
        p = f"h.{i}."
        _norm(w, f"{p}ln_1", h)
        _norm(w, f"{p}ln_2", h)
        for name, n_in, n_out in (
            ("attn.c_attn", h, 3 * h),
            ("attn.c_proj", h, h),
            ("mlp.c_fc", h, inter),
            ("mlp.c_proj", inter, h),
        ):
            w[f"{p}{name}.weight"] = [n_in, n_out]  # Conv1D: [in, out]
            w[f"{p}{name}.bias"] = [n_out]
    _norm(w, "ln_f", h)
    return w


FAMILIES: dict[Callable[[dict[str, Any]], Shapes], tuple[str, ...]] = {
    _llama_like: ("llama", "mistral", "qwen2", "qwen3"),
    _bert_like: ("bert", "roberta"),
    _gpt2: ("gpt2",),
}


def _linear(w: Shapes, name: str, n_in: int, n_out: int, bias: bool) -> None:
    w[f"{name}.weight"] = [n_out, n_in]
    if bias:
        w[f"{name}.bias"] = [n_out]


def _norm(w: Shapes, name: str, size: int) -> None:
    w[f"{name}.weight"] = [size]
    w[f"{name}.bias"] = [size]


def _block_key(name: str) -> str | None:
    """`model.layers.3.mlp.up_proj.weight` -> `model.layers.3` (None outside repeated blocks)."""
    parts = name.split(".")
    for i, part in enumerate(parts[:-1]):
        if part.isdigit():
            return ".".join(parts[: i + 1])
    return None


def linear_modules(weights: Shapes) -> dict[str, tuple[int, int]]:
    """Module name -> (in, out) of every matrix weight (what LoRA and friends can adapt)."""
    modules = {}
    for name, shape in weights.items():
        if name.endswith(".weight") and len(shape) == 2 and not _is_embedding(name):
            rows, cols = shape
            conv1d = name.startswith(("h.", "transformer.h."))  # GPT-2 stores [in, out]
            modules[name[: -len(".weight")]] = (rows, cols) if conv1d else (cols, rows)
    return modules


def _is_embedding(name: str) -> bool:
    return any(k in name for k in ("embed", "wte", "wpe", "lm_head"))
