"""The job schema: every shipped config validates; every bad input gets one clear line."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from launcher.config_loading import load_job_config, parse_override, validate_job_dict
from launcher.errors import UserError
from tests.conftest import REPO_ROOT

MINIMAL = {"model": {"path": "m"}, "data": {"train": "a", "validation": "b", "test": "c"}}


def _errors(raw: dict) -> list[str]:
    with pytest.raises(UserError) as info:
        validate_job_dict(raw)
    return info.value.messages


def _with(section: str, key: str, value: object) -> dict:
    raw = {k: dict(v) for k, v in MINIMAL.items()}
    raw.setdefault(section, {})[key] = value
    return raw


@pytest.mark.parametrize(
    "path", sorted((REPO_ROOT / "configs").rglob("*.yaml")), ids=lambda p: p.name
)
def test_every_shipped_config_validates_and_says_how_to_run_it(path: Path) -> None:
    job = load_job_config(path)
    assert job.cluster.num_workers >= 1
    first_line = path.read_text().splitlines()[0]
    assert (first_line.startswith("# Run:") and "ftlaunch" in first_line) or "make" in first_line


def test_defaults_fill_every_section() -> None:
    job = validate_job_dict(MINIMAL)
    assert (
        job.engine.zero_stage == 2
        and job.peft.method == "none"
        and job.training.eval_every == "epoch"
    )
    assert job.global_batch_size() == 16 * 1 * 2


@pytest.mark.parametrize(
    ("section", "key", "value", "expected"),
    [
        ("optim", "lr", -1, "optim.lr: must be > 0"),
        ("engine", "zero_stage", 5, "engine.zero_stage: must be <= 3 (got 5)"),
        ("cluster", "num_workers", 0, "cluster.num_workers: must be > 0 (got 0)"),
        ("peft", "method", "qlora", "peft.method: must be one of 'none', 'lora', 'adapter'"),
        (
            "training",
            "micro_batch_size",
            "big",
            "training.micro_batch_size: input should be a valid integer",
        ),
        ("engine", "offload", "nvme", "engine.offload: must be one of 'none' or 'cpu'"),
        ("training", "heartbeat_timeout_s", 0, "training.heartbeat_timeout_s: must be > 0"),
        ("training", "stall_timeout_s", -5, "training.stall_timeout_s: must be > 0"),
        ("training", "collective_timeout_s", 0, "training.collective_timeout_s: must be > 0"),
        (
            "training",
            "stall_timeout_s",
            30,
            "training.stall_timeout_s: 30 is below training.heartbeat_timeout_s (60)",
        ),
    ],
)
def test_bad_values_name_the_field(section: str, key: str, value: object, expected: str) -> None:
    messages = _errors(_with(section, key, value))
    assert len(messages) == 1
    assert messages[0].startswith(expected), messages


def test_unknown_key_suggests_the_closest_valid_one() -> None:
    (message,) = _errors(_with("training", "epoch", 3))
    assert message.startswith("training.epoch: unknown key; did you mean 'training.epochs'?")
    assert "valid keys:" in message and "micro_batch_size" in message


def test_unknown_section_suggests_the_closest_valid_one() -> None:
    raw = dict(MINIMAL, trainig={"epochs": 1})
    (message,) = _errors(raw)
    assert "did you mean 'training'?" in message


def test_all_errors_are_reported_together() -> None:
    raw = _with("optim", "lr", 0)
    raw["engine"] = {"zero_stage": -1}
    messages = _errors(raw)
    assert {m.split(":")[0] for m in messages} == {"optim.lr", "engine.zero_stage"}


def test_missing_required_field() -> None:
    (message,) = _errors({"model": {"path": "m"}, "data": {"train": "a", "validation": "b"}})
    assert message == "data.test: required field is missing"


def test_offload_without_zero_is_refused() -> None:
    raw = _with("engine", "offload", "cpu")
    raw["engine"]["zero_stage"] = 0
    (message,) = _errors(raw)
    assert message.startswith("engine.offload: 'cpu' needs engine.zero_stage >= 1")


def test_eval_every_accepts_steps_or_epoch() -> None:
    assert validate_job_dict(_with("training", "eval_every", 25)).training.eval_every == 25
    (message,) = _errors(_with("training", "eval_every", "sometimes"))
    assert message.startswith("training.eval_every:") and "'epoch'" in message


def test_config_is_frozen() -> None:
    job = validate_job_dict(MINIMAL)
    with pytest.raises(ValidationError, match="frozen"):
        job.optim.lr = 1.0  # type: ignore[misc]


@pytest.mark.parametrize(
    ("text", "key", "value"),
    [
        ("optim.lr=1e-4", "optim.lr", 1e-4),
        ("training.eval_every=epoch", "training.eval_every", "epoch"),
        ("cluster.address=null", "cluster.address", None),
        ("peft.target_modules=[query, value]", "peft.target_modules", ["query", "value"]),
        ("engine.zero_stage=3", "engine.zero_stage", 3),
    ],
)
def test_set_values_parse_as_yaml_scalars(text: str, key: str, value: object) -> None:
    assert parse_override(text) == (key, value)


@pytest.mark.parametrize("text", ["optim.lr", "=3", "optim..lr=1"])
def test_malformed_set_is_refused(text: str) -> None:
    with pytest.raises(UserError, match="--set"):
        parse_override(text)


def test_set_overrides_are_validated_like_the_file(tmp_path: Path) -> None:
    config = tmp_path / "job.yaml"
    config.write_text("model: {path: m}\ndata: {train: a, validation: b, test: c}\n")
    assert load_job_config(config, ["optim.lr=0.5"]).optim.lr == 0.5
    with pytest.raises(UserError) as info:
        load_job_config(config, ["engine.zero_stage=7"])
    assert info.value.messages == ["engine.zero_stage: must be <= 3 (got 7)"]
    with pytest.raises(UserError, match=r"did you mean 'optim\.lr'"):
        load_job_config(config, ["optim.lrr=0.1"])


def test_malformed_yaml_reports_the_line(tmp_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text("model:\n  path: m\ndata: [unclosed\n")
    with pytest.raises(UserError) as info:
        load_job_config(config)
    (message,) = info.value.messages
    assert message.startswith(f"{config}: line 4") or message.startswith(f"{config}: line 3"), (
        message
    )
    assert "malformed YAML" in message


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="config file not found"):
        load_job_config(tmp_path / "nope.yaml")
