"""What every worker's environment gets from the backend: the offline flags, the job's plain
`cluster.env` (which may override them), and secrets only sealed, never in plain text."""

from __future__ import annotations

import pytest

from cluster.auth.secrets import SEALED_ENV, unseal
from cluster.ray.backend import WORKER_ENV, RayBackend
from trainer.config.cluster import ClusterConfig


def test_cluster_env_reaches_workers_in_plain_text_and_secrets_only_sealed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    token = "t" * 64
    monkeypatch.setenv("RAY_AUTH_TOKEN", token)
    monkeypatch.setenv("FTL_TEST_API_KEY", "sk-planted-value")
    cluster = ClusterConfig(
        env={"NCCL_SOCKET_IFNAME": "eth0", "HF_HUB_OFFLINE": "0"},
        secret_env=["FTL_TEST_API_KEY"],
    )
    env = RayBackend(cluster)._worker_env()
    assert env["NCCL_SOCKET_IFNAME"] == "eth0"
    assert env["HF_HUB_OFFLINE"] == "0"  # the job's value wins over the default
    assert env["TOKENIZERS_PARALLELISM"] == WORKER_ENV["TOKENIZERS_PARALLELISM"]
    assert "sk-planted-value" not in "".join(env.values())
    assert unseal(env[SEALED_ENV], token)["FTL_TEST_API_KEY"] == "sk-planted-value"
