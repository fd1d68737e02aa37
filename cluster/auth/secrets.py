"""Secrets (API keys, tokens) that workers need but nobody else may see.

Only the variables named in `cluster.secret_env` travel. A variable whose name looks like a
credential (HF_TOKEN, WANDB_API_KEY, ...) but is not listed stays here; the launcher names it
in a warning (never its value), so a user who meant to pass it can list it.

How they travel, and why: Ray puts a job's `runtime_env.env_vars` into the job info that the
dashboard, `ray job list` and our own `ftlaunch list`/`status` show, and Ray Train may pickle
what it is given into its storage path. So plain values never go there. Instead the client
seals them into one env var, FTLAUNCH_SEALED_SECRETS, encrypted (Fernet: AES-128-CBC +
HMAC-SHA256) with a key derived from the cluster's Ray auth token. Job info then shows only
ciphertext. Each worker, which already holds the cluster token (Ray processes inherit it from the
node), unseals the values into its own `os.environ` before training. Anyone who holds the token
can read them, but such a person can already run arbitrary code on the cluster, so this adds no
new access; what it prevents is the values leaking to logs, dashboards, job metadata and disk.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
from collections.abc import Iterable, Mapping

SEALED_ENV = "FTLAUNCH_SEALED_SECRETS"
# The marker must end a word: HF_TOKEN, WANDB_API_KEY, AWS_SECRET_ACCESS_KEY, DB_PASSWORD, APIKEY,
# but not TOKENIZERS_PARALLELISM (whose value "false" would otherwise be masked everywhere).
SECRET_NAME = re.compile(r"(TOKEN|KEY|SECRET|PASSWORD)S?(?![A-Z])", re.IGNORECASE)
# Ray's own credentials stay with Ray: the cluster has its token, ours must not travel.
NEVER_SHIPPED = ("RAY_", SEALED_ENV)
MIN_REDACTED_LENGTH = 4  # masking "1" or "on" everywhere would garble output, not protect it
MASK = "******"


def secret_names(environ: Mapping[str, str], listed: Iterable[str]) -> list[str]:
    """Names of the variables to pass to workers as secrets: those listed in
    `cluster.secret_env` that are set here, minus Ray's own."""
    return sorted(n for n in set(listed) if n in environ and not n.startswith(NEVER_SHIPPED))


def unlisted_secret_names(environ: Mapping[str, str], listed: Iterable[str]) -> list[str]:
    """Variables set here whose names look like credentials but are not in
    `cluster.secret_env`: not passed to workers (the launcher warns, naming them)."""
    chosen = set(listed)
    return sorted(
        n
        for n in environ
        if SECRET_NAME.search(n) and n not in chosen and not n.startswith(NEVER_SHIPPED)
    )


def without_secrets(environ: Mapping[str, str], listed: Iterable[str]) -> dict[str, str]:
    """`environ` minus every secret, listed or lookalike (Ray's own stay): the environment of
    processes that need none, such as an embedded cluster's, whose workers get the listed ones
    sealed like any other cluster's."""
    names = set(secret_names(environ, listed)) | set(unlisted_secret_names(environ, listed))
    return {k: v for k, v in environ.items() if k not in names}


def unlisted_warnings(environ: Mapping[str, str], listed: Iterable[str]) -> list[str]:
    """One warning per unlisted credential-looking variable: its name, never its value."""
    return [
        f"warning: {name} looks like a secret but is not in cluster.secret_env, so it is not "
        "passed to the workers (list it there to pass it)"
        for name in unlisted_secret_names(environ, listed)
    ]


def missing_listed(environ: Mapping[str, str], listed: Iterable[str]) -> list[str]:
    """Names in `cluster.secret_env` that are not set here (a user error: nothing to pass)."""
    return [name for name in listed if name not in environ]


def _fernet(token: str):
    from cryptography.fernet import Fernet

    digest = hashlib.sha256(b"ftlaunch-secret-env\0" + token.encode()).digest()
    return Fernet(base64.urlsafe_b64encode(digest))


def seal(values: Mapping[str, str], token: str) -> str:
    """Encrypt {name: value} with a key derived from the cluster token."""
    return _fernet(token).encrypt(json.dumps(dict(values)).encode()).decode()


def unseal(blob: str, token: str) -> dict[str, str]:
    """Inverse of `seal`.

    Raises:
        ValueError: the blob was sealed with another token or was altered.
    """
    from cryptography.fernet import InvalidToken

    try:
        return json.loads(_fernet(token).decrypt(blob.encode()))
    except InvalidToken:
        raise ValueError(
            f"{SEALED_ENV}: cannot unseal (sealed for another cluster token?)"
        ) from None


def sealed_env_vars(
    environ: Mapping[str, str], listed: Iterable[str], token: str | None
) -> dict[str, str]:
    """The runtime_env env_vars that carry this process's secrets to workers: an already
    sealed blob passes through unchanged (a job driver started by `ftlaunch submit`), else the
    current values are sealed; nothing when there are no secrets or no token to seal with."""
    if SEALED_ENV in environ:
        return {SEALED_ENV: environ[SEALED_ENV]}
    names = secret_names(environ, listed)
    if not names or not token:
        return {}
    return {SEALED_ENV: seal({n: environ[n] for n in names}, token)}


def unseal_into_environ(token: str | None) -> list[str]:
    """Worker side: put the sealed secrets into os.environ; returns their names."""
    blob = os.environ.get(SEALED_ENV)
    if not blob or not token:
        return []
    values = unseal(blob, token)
    os.environ.update(values)
    return sorted(values)


def secret_values(environ: Mapping[str, str], listed: Iterable[str] = ()) -> list[str]:
    """Values to mask in anything shown to the user: the listed secrets and anything whose name
    looks like a credential (masking more than is shipped costs nothing)."""
    names = set(secret_names(environ, listed)) | set(unlisted_secret_names(environ, listed))
    values = {environ[n] for n in names}
    return sorted((v for v in values if len(v) >= MIN_REDACTED_LENGTH), key=len, reverse=True)


def redact(text: str, values: Iterable[str]) -> str:
    """Replace every occurrence of a secret value (longest first, so overlaps mask fully)."""
    for value in sorted(values, key=len, reverse=True):
        if len(value) >= MIN_REDACTED_LENGTH:
            text = text.replace(value, MASK)
    return text
