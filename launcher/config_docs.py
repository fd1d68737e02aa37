"""docs/config.md, generated from the job schema: every key with its type, default and the
`Field(description=...)` written next to it in trainer/config/. Regenerate with `make docs`
(`python -m launcher.config_docs > docs/config.md`); tests/unit/launcher/test_config_docs.py fails
when the file is stale, so the reference cannot drift from the code.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from trainer.config.schema import JobConfig

HEADER = """\
# Config reference

Generated from `trainer/config/` by `make docs`; do not edit by hand. Every section is optional
except `model` and `data`; unknown keys are errors that list the valid ones. Sizes follow one rule
everywhere: `KB`, `MB`, `GB` are powers of 10, `KiB`, `MiB`, `GiB` powers of 2.

A job file may start with `base: other.yaml` (or a list of files, paths relative to the file that
names them): the bases are deep-merged in order, the file's own keys win, `--set` comes last;
`ftlaunch validate FILE --explain` shows where every key came from.
"""
PEFT_NOTE = (
    "`peft.method` chooses the method; each method accepts only its own options "
    "(see [peft.md](peft.md))."
)


def render_reference() -> str:
    """The whole reference as Markdown (pure: the same schema always gives the same text)."""
    schema = JobConfig.model_json_schema()
    defs = schema["$defs"]
    lines = [HEADER, "## Top level", "", *_table(schema, "", defs, nested=False)]
    for section, prop in schema["properties"].items():
        if section == "peft":
            lines += ["", "## peft", "", PEFT_NOTE, ""]
            for option in prop["oneOf"]:
                method = _ref_name(option)
                method_props = defs[method]["properties"]
                tag = method_props["method"].get("const", method_props["method"].get("default"))
                options = {k: v for k, v in method_props.items() if k != "method"}
                table = _table(defs[method] | {"properties": options}, "peft.", defs, nested=True)
                lines += [f"### method: {tag}", "", *(table if options else ["No options."])]
                lines.append("")
            continue
        ref = _section_ref(prop)
        if ref is None:
            continue
        lines += ["", f"## {section}", ""]
        description = defs[ref].get("description")
        if description:
            lines += [_one_line(description), ""]
        lines += _table(defs[ref], f"{section}.", defs, nested=True)
    return "\n".join(lines).rstrip() + "\n"


def _table(model: dict[str, Any], prefix: str, defs: dict[str, Any], nested: bool) -> list[str]:
    """One row per key of a model's schema; a nested section's keys are listed inline."""
    rows = ["| key | type | default | meaning |", "|---|---|---|---|"]
    required = set(model.get("required", []))
    for name, prop in model["properties"].items():
        ref = _section_ref(prop)
        if ref is not None and nested:  # a sub-section (engine.fsdp): its keys inline
            rows += _table(defs[ref], f"{prefix}{name}.", defs, nested)[2:]
            continue
        if "oneOf" in prop and not all("$ref" in option for option in prop["oneOf"]):
            prop = prop | {"anyOf": [_inline(option, defs) for option in prop["oneOf"]]}
        is_section = ref is not None or ("oneOf" in prop and "anyOf" not in prop)
        rows.append(_row(f"{prefix}{name}", prop, name in required, is_section))
    return rows


def _inline(option: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    """A value that is either a plain value or a small mapping (cluster.num_workers: 2, or
    {min, max}): the mapping is shown by its keys."""
    if "$ref" not in option:
        return option
    keys = ", ".join(defs[_ref_name(option)]["properties"])
    return {"const": f"{{{keys}}}"}


def _row(key: str, prop: dict[str, Any], required: bool, is_section: bool) -> str:
    kind = "section" if is_section else _type(prop)
    if required:
        default = "required"
    elif is_section:
        default = "see below"
    else:
        default = _value(prop["default"]) if "default" in prop else "empty"
    return f"| `{key}` | {kind} | {default} | {_one_line(prop.get('description', ''))} |"


def _type(prop: dict[str, Any]) -> str:
    if any(option.get("pattern") for option in prop.get("anyOf", [])):
        return "size"  # pydantic's ByteSize: a number of bytes, or "4GB", "512MiB"
    if "anyOf" in prop:
        return " or ".join(_type(option) for option in prop["anyOf"])
    if "const" in prop:
        return _value(prop["const"])
    if "enum" in prop:
        return " \\| ".join(_value(v) for v in prop["enum"])
    kind = prop.get("type", "")
    if kind == "array":
        return f"list of {_type(prop.get('items', {}))}"
    if kind == "object":
        return f"map of name to {_type(prop.get('additionalProperties', {}))}"
    if "pattern" in prop and kind == "string":
        return "size"
    names = {
        "integer": "int",
        "number": "float",
        "string": "str",
        "boolean": "bool",
        "null": "null",
    }
    return names.get(kind, kind or "any") + _bounds(prop)


def _bounds(prop: dict[str, Any]) -> str:
    # pydantic releases differ in writing a float bound as 0 or 0.0; a float field's bound is
    # shown as a float whichever wrote the schema
    number = float if prop.get("type") == "number" else (lambda v: v)
    parts = [
        f"{symbol} {_value(number(prop[key]))}"
        for key, symbol in (
            ("exclusiveMinimum", ">"),
            ("minimum", ">="),
            ("exclusiveMaximum", "<"),
            ("maximum", "<="),
            ("gt", ">"),
        )
        if key in prop
    ]
    return f" ({', '.join(parts)})" if parts else ""


def _value(value: Any) -> str:
    if isinstance(value, str):
        return f"`{value}`"
    return f"`{json.dumps(value)}`"


def _section_ref(prop: dict[str, Any]) -> str | None:
    if "$ref" in prop:
        return _ref_name(prop)
    for option in prop.get("anyOf", []) + prop.get("allOf", []):  # allOf: pydantic < 2.9
        if "$ref" in option:
            return _ref_name(option)
    return None


def _ref_name(prop: dict[str, Any]) -> str:
    return prop["$ref"].rsplit("/", 1)[1]


def _one_line(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def main() -> int:
    sys.stdout.write(render_reference())
    return 0


if __name__ == "__main__":
    sys.exit(main())
