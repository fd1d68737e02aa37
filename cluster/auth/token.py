"""The Ray auth token this process would present, from the same places Ray looks: the
RAY_AUTH_TOKEN variable, the file named by RAY_AUTH_TOKEN_PATH, then ~/.ray/auth_token."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

DEFAULT_TOKEN_FILE = Path("~/.ray/auth_token")


def load_token(environ: Mapping[str, str] | None = None) -> str | None:
    env = os.environ if environ is None else environ
    if env.get("RAY_AUTH_TOKEN", "").strip():
        return env["RAY_AUTH_TOKEN"].strip()
    candidates = [Path(env["RAY_AUTH_TOKEN_PATH"])] if env.get("RAY_AUTH_TOKEN_PATH") else []
    candidates.append(DEFAULT_TOKEN_FILE.expanduser())
    for path in candidates:
        try:
            token = path.read_text().strip()
        except OSError:
            continue
        if token:
            return token
    return None


def write_token_file(path: Path, token: str) -> Path:
    """Write the token readable by its owner only (0600 from creation, never world-readable
    even for an instant)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(token + "\n")
    return path
