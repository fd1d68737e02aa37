"""How many parameters a PEFT method trains on an architecture (pure).

Gradients and optimizer states exist only for these; the frozen base keeps just its weights.
Target names match as peft matches a list (launcher/peft_targets.py:matches). When
`target_modules` is left out, peft picks per architecture; its defaults for the families the
planner knows are repeated here.
"""

from __future__ import annotations

import math

from launcher.errors import UserError
from launcher.peft_targets import matches
from launcher.plan.architecture import Architecture, linear_modules
from trainer.config.peft import (
    ALL_LINEAR,
    AdapterPeft,
    Ia3Peft,
    LoraPeft,
    PeftConfig,
    PrefixTuningPeft,
    PromptTuningPeft,
)

# peft's TRANSFORMERS_MODELS_TO_*_TARGET_MODULES_MAPPING for these families (peft 0.18).
DEFAULT_TARGETS = {
    "bert": ["query", "value"],
    "roberta": ["query", "value"],
    "llama": ["q_proj", "v_proj"],
    "mistral": ["q_proj", "v_proj"],
    "qwen2": ["q_proj", "v_proj"],
    "qwen3": ["q_proj", "v_proj"],
    "gpt2": ["c_attn"],
}
DEFAULT_IA3 = {
    "bert": (["key", "value", "output.dense"], ["output.dense"]),
    "roberta": (["key", "value", "output.dense"], ["output.dense"]),
    "llama": (["k_proj", "v_proj", "down_proj"], ["down_proj"]),
    "mistral": (["k_proj", "v_proj", "down_proj"], ["down_proj"]),
    "qwen2": (["k_proj", "v_proj", "down_proj"], ["down_proj"]),
    "qwen3": (["k_proj", "v_proj", "down_proj"], ["down_proj"]),
    "gpt2": (["c_attn", "mlp.c_proj"], ["mlp.c_proj"]),
}
HEAD_PREFIXES = ("classifier.", "score.")
OUTPUT_LAYERS = (*HEAD_PREFIXES, "lm_head.")


def trainable_params(peft: PeftConfig, arch: Architecture, task: str) -> int:
    """Parameters that train under `peft` (all of them for method none).

    Raises:
        UserError: target modules left to peft's default on an architecture without a known one.
    """
    if peft.method == "none":
        return arch.params
    # peft keeps a sequence-classification head trainable (modules_to_save).
    head = sum(math.prod(s) for n, s in arch.weights.items() if n.startswith(HEAD_PREFIXES))
    head = head if task == "sequence-classification" else 0
    modules = linear_modules(arch.weights)
    if isinstance(peft, LoraPeft):
        chosen = _targets(peft.target_modules, arch, modules)
        extra = sum(n_out for _, n_out in chosen.values()) if peft.use_dora else 0
        return head + sum(peft.r * (n_in + n_out) for n_in, n_out in chosen.values()) + extra
    if isinstance(peft, AdapterPeft):  # LoHa: two rank-r factor pairs per module
        chosen = _targets(peft.target_modules, arch, modules)
        return head + sum(2 * peft.r * (n_in + n_out) for n_in, n_out in chosen.values())
    if isinstance(peft, Ia3Peft):
        return head + _ia3(peft, arch, modules)
    if isinstance(peft, PromptTuningPeft):
        return head + peft.num_virtual_tokens * arch.hidden
    if isinstance(peft, PrefixTuningPeft):
        return head + _prefix(peft, arch)
    raise UserError(f"peft.method: {peft.method!r} is not known to the planner")


def _targets(
    targets: list[str] | str | None, arch: Architecture, modules: dict[str, tuple[int, int]]
) -> dict[str, tuple[int, int]]:
    if targets == ALL_LINEAR:  # peft: every linear layer but the output layer
        return {m: shape for m, shape in modules.items() if not m.startswith(OUTPUT_LAYERS)}
    names = targets if targets is not None else _default(arch.model_type, DEFAULT_TARGETS)
    return {m: shape for m, shape in modules.items() if any(matches(m, t) for t in names)}


def _default(model_type: str, table: dict) -> list[str]:
    if model_type not in table:
        raise UserError(
            f"peft.target_modules: peft has no default for model_type {model_type!r} known to "
            "the planner; list the modules to adapt"
        )
    return table[model_type]


def _ia3(peft: Ia3Peft, arch: Architecture, modules: dict[str, tuple[int, int]]) -> int:
    default = DEFAULT_IA3.get(arch.model_type)
    targets = peft.target_modules or (default[0] if default else _default(arch.model_type, {}))
    feedforward = peft.feedforward_modules or (default[1] if default else [])
    total = 0
    for module, (n_in, n_out) in _targets(targets, arch, modules).items():
        total += n_in if any(matches(module, f) for f in feedforward) else n_out
    return total


def _prefix(peft: PrefixTuningPeft, arch: Architecture) -> int:
    """One key and one value vector per virtual token per layer (kv heads x head size wide)."""
    width = 2 * arch.layers * arch.kv_heads * arch.head_dim
    if not peft.projection:
        return peft.num_virtual_tokens * width
    inner = peft.projection_hidden_size or arch.hidden
    embedding = peft.num_virtual_tokens * arch.hidden
    return embedding + arch.hidden * inner + inner + inner * width + width
