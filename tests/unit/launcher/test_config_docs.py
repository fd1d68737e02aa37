"""docs/config.md is generated from the schema and must match it; every key has a description."""

from __future__ import annotations

from pydantic import BaseModel

from launcher.config_docs import render_reference
from tests.conftest import REPO_ROOT
from trainer.config.peft import PEFT_METHODS
from trainer.config.schema import JobConfig


def test_docs_config_md_is_what_the_schema_renders() -> None:
    committed = (REPO_ROOT / "docs" / "config.md").read_text()
    assert committed == render_reference(), "docs/config.md is stale: run `make docs`"


def _undescribed(model: type[BaseModel], prefix: str) -> list[str]:
    missing = []
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            missing += _undescribed(annotation, f"{prefix}{name}.")
        elif not field.description and name != "method":
            missing.append(f"{prefix}{name}")
    return missing


def test_every_config_key_says_what_it_means() -> None:
    missing = _undescribed(JobConfig, "")
    for method in PEFT_METHODS.values():
        missing += _undescribed(method, "peft.")
    assert missing == [], f"fields without Field(description=...): {missing}"


def test_every_key_appears_in_the_reference() -> None:
    text = render_reference()
    for section in ("model", "data", "optim", "training", "engine", "cluster", "output"):
        model = JobConfig.model_fields[section].annotation
        assert isinstance(model, type) and issubclass(model, BaseModel)
        for name in model.model_fields:
            assert f"`{section}.{name}" in text, f"{section}.{name}"
