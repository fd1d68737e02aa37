"""The `peft` section: one option model per method, chosen by `peft.method`.

Each method has only the options it really has (extra="forbid"), so `num_virtual_tokens` under
`method: lora` is an error that names the method's valid options instead of being ignored.
Torch-free: the launcher validates it; trainer/model/peft.py turns it into a peft config.

"adapter" is peft's LoHa (low-rank Hadamard product, from LyCORIS): peft has no Houlsby-style
bottleneck adapter, and LoHa is the adapter-style method it offers for any architecture with
linear layers (AdaptionPrompt is Llama-only). It merges into the base weights like LoRA.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag

from trainer.config.base import PositiveInt

Dropout = Annotated[float, Field(ge=0, lt=1)]
TargetModules = Annotated[
    list[str] | None,
    Field(
        description="Module name suffixes to adapt (peft matching); default: peft's choice for "
        "the architecture (e.g. the attention query/value projections)."
    ),
]
# peft's own shorthand: every linear layer except the output layer (lm_head / classifier).
ALL_LINEAR = "all-linear"
LinearTargets = Annotated[
    list[str] | Literal["all-linear"] | None,
    Field(
        description="Module name suffixes to adapt (peft matching), or 'all-linear' for every "
        "linear layer but the output; default: peft's choice for the architecture (e.g. the "
        "attention query/value projections)."
    ),
]


def _listed_targets(targets: list[str] | str | None) -> dict[str, list[str]]:
    """The target names to check against the model; 'all-linear' names none (peft expands it)."""
    return {"peft.target_modules": targets} if isinstance(targets, list) and targets else {}


class _Method(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    method: str  # each method narrows it to its own literal

    def is_prompt_learning(self) -> bool:
        """Virtual tokens in front of the input: nothing to merge into the base weights."""
        return False

    def can_merge(self) -> bool:
        return self.method != "none" and not self.is_prompt_learning()

    def target_module_fields(self) -> dict[str, list[str]]:
        """Dotted field -> module name suffixes that must each match a module of the model."""
        return {}


class NoPeft(_Method):
    method: Literal["none"] = "none"


class LoraPeft(_Method):
    method: Literal["lora"] = "lora"
    r: PositiveInt = Field(default=8, description="Rank of the update.")
    alpha: Annotated[float, Field(gt=0)] = Field(
        default=16.0, description="Scale of the update (alpha / r)."
    )
    dropout: Dropout = Field(default=0.05, description="Dropout on the adapter's input.")
    target_modules: LinearTargets = None
    use_dora: bool = Field(default=False, description="Weight-decomposed LoRA (DoRA).")
    use_rslora: bool = Field(default=False, description="Rank-stabilised scaling alpha/sqrt(r).")

    def target_module_fields(self) -> dict[str, list[str]]:
        return _listed_targets(self.target_modules)


class AdapterPeft(_Method):
    """peft's LoHa (see the module docstring for why)."""

    method: Literal["adapter"] = "adapter"
    r: PositiveInt = Field(default=8, description="Rank of the Hadamard factors.")
    alpha: Annotated[float, Field(gt=0)] = Field(
        default=8.0, description="Scale of the update (alpha / r)."
    )
    rank_dropout: Dropout = Field(default=0.0, description="Dropout per rank.")
    module_dropout: Dropout = Field(
        default=0.0, description="Probability of skipping a whole adapted module."
    )
    target_modules: LinearTargets = None

    def target_module_fields(self) -> dict[str, list[str]]:
        return _listed_targets(self.target_modules)


class Ia3Peft(_Method):
    method: Literal["ia3"] = "ia3"
    target_modules: TargetModules = None
    feedforward_modules: list[str] | None = Field(
        default=None,
        description="Subset of target_modules whose inputs (not outputs) are scaled.",
    )

    def target_module_fields(self) -> dict[str, list[str]]:
        return {"peft.target_modules": self.target_modules} if self.target_modules else {}


class PromptTuningPeft(_Method):
    method: Literal["prompt_tuning"] = "prompt_tuning"
    num_virtual_tokens: PositiveInt = Field(
        default=20, description="Trained virtual tokens in front of the input."
    )
    init_text: str | None = Field(
        default=None,
        description="Initialise the virtual tokens from this text's embeddings; null: random.",
    )

    def is_prompt_learning(self) -> bool:
        return True


class PrefixTuningPeft(_Method):
    method: Literal["prefix_tuning"] = "prefix_tuning"
    num_virtual_tokens: PositiveInt = Field(
        default=20, description="Virtual key/value positions in front of every layer's input."
    )
    projection: bool = Field(
        default=False, description="Reparametrise the prefix through a 2-layer MLP."
    )
    projection_hidden_size: PositiveInt | None = Field(
        default=None, description="Hidden size of that MLP; default: the model's hidden size."
    )

    def is_prompt_learning(self) -> bool:
        return True


PEFT_METHODS: dict[str, type[_Method]] = {
    "none": NoPeft,
    "lora": LoraPeft,
    "adapter": AdapterPeft,
    "prompt_tuning": PromptTuningPeft,
    "prefix_tuning": PrefixTuningPeft,
    "ia3": Ia3Peft,
}


def _method_of(value: Any) -> str:
    # A section without `method` is full fine-tuning, as before the menu existed.
    if isinstance(value, dict):
        return value.get("method", "none")
    return getattr(value, "method", "none")


PeftConfig = Annotated[
    Annotated[NoPeft, Tag("none")]
    | Annotated[LoraPeft, Tag("lora")]
    | Annotated[AdapterPeft, Tag("adapter")]
    | Annotated[PromptTuningPeft, Tag("prompt_tuning")]
    | Annotated[PrefixTuningPeft, Tag("prefix_tuning")]
    | Annotated[Ia3Peft, Tag("ia3")],
    Discriminator(_method_of),
]


def peft_error_line(err: Mapping[str, Any]) -> str | None:
    """The user's line for a pydantic error inside `peft`, or None if it is not one.

    pydantic puts the chosen method's tag in the location (`peft.lora.r`); users wrote `peft.r`.
    """
    loc = [str(part) for part in err["loc"]]
    if not loc or loc[0] != "peft":
        return None
    if err["type"] == "union_tag_invalid":
        valid = ", ".join(repr(m) for m in PEFT_METHODS)
        return f"peft.method: must be one of {valid} (got {_method_of(err['input'])!r})"
    if len(loc) < 3 or loc[1] not in PEFT_METHODS:
        return None
    method, field = loc[1], ".".join(["peft", *loc[2:]])
    if err["type"] == "extra_forbidden":
        options = [f for f in PEFT_METHODS[method].model_fields if f != "method"]
        listed = ", ".join(options) if options else "none"
        return f"{field}: not an option of peft.method {method!r} (its options: {listed})"
    return None


def peft_field_path(loc: list[str]) -> list[str]:
    """Drop the method tag pydantic inserts after `peft` (see peft_error_line)."""
    if len(loc) >= 2 and loc[0] == "peft" and loc[1] in PEFT_METHODS:
        return [loc[0], *loc[2:]]
    return loc
