"""What a worker receives: the validated job plus everything the launcher resolved for it."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from trainer.config.schema import JobConfig


class RunSpec(BaseModel):
    """The one serialized, validated object every worker gets (no ad-hoc env vars)."""

    # protected_namespaces=(): `model_dir` is ours; pydantic < 2.10 warns about any `model_` field
    model_config = ConfigDict(extra="forbid", frozen=True, protected_namespaces=())

    job: JobConfig
    model_dir: str
    split_dirs: dict[str, str]
    label_names: list[str]
    run_id: str
    config_fingerprint: str = ""  # what a checkpoint must match to be resumed by this job
    resume_tag: str | None = None  # checkpoint chosen by `--resume`
