"""Whether the Ray that ftlaunch starts or joins authenticates requests: closed by default.

Token authentication exists from Ray 2.52 on; older Ray ignores RAY_AUTH_MODE, so a cluster
would accept anybody's requests (and run their code) without a word. And a user's
RAY_AUTH_MODE=disabled would win silently. Both are refused unless the user passes --insecure.
Pure: the version comes from the caller (package metadata in the launcher, before anything is
written; `ray.__version__` in the backend).
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from cluster.errors import ClusterError

TOKEN_AUTH_SINCE = (2, 52)  # the first Ray with token authentication


def check_closed(version: str, environ: Mapping[str, str], insecure: bool) -> None:
    """Refuse to start or join a Ray that accepts requests without a token, unless `insecure`.

    Raises:
        ClusterError: a Ray older than 2.52, or RAY_AUTH_MODE other than `token`.
    """
    if insecure:
        return
    numbers = tuple(int(n) for n in re.findall(r"\d+", version)[:2])
    if numbers < TOKEN_AUTH_SINCE:
        raise ClusterError(
            f"ray: version {version} has no token authentication (it needs >= 2.52), so anyone "
            "who reaches the cluster's ports could run code there; upgrade Ray, or pass "
            "--insecure to run without authentication"
        )
    mode = environ.get("RAY_AUTH_MODE", "token")
    if mode != "token":
        raise ClusterError(
            f"RAY_AUTH_MODE: is {mode!r}, so the cluster would accept requests without a token; "
            "unset it (ftlaunch uses token authentication), or pass --insecure"
        )
