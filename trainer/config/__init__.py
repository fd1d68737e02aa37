"""The job spec, torch-free: what the launcher validates in the user's shell and every worker
re-validates from the same resolved dict."""

from trainer.config.schema import JobConfig

__all__ = ["JobConfig"]
