"""Errors a worker raises about the user's config: reported as exit 2 with their one line."""

from __future__ import annotations


class UnsupportedConfigError(ValueError):
    """The config is valid on paper but this model or machine cannot run it (a PEFT target the
    model lacks, bf16 without CPU support, ...). The message starts with the dotted field."""
