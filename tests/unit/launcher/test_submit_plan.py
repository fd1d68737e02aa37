"""Pure parts of `ftlaunch submit` and the Jobs API commands: address order, what is uploaded
and what must be visible on the cluster, runtime_env contents, ids, sizes, secret sealing and
masking, the token file mode. No processes."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from cluster.auth.secrets import (
    MASK,
    SEALED_ENV,
    redact,
    seal,
    sealed_env_vars,
    secret_names,
    secret_values,
    unlisted_secret_names,
    unlisted_warnings,
    unseal,
)
from cluster.auth.token import load_token, write_token_file
from cluster.ray.jobs import api_url
from launcher.config_loading import validate_job_dict
from launcher.errors import UserError
from launcher.sizes import parse_size
from launcher.slurm.jobs import is_slurm_job_id
from launcher.submit_plan import (
    MAX_UPLOAD_LIMIT,
    build_runtime_env,
    new_submission_id,
    plan_submission,
    resolve_address,
)


def job(**data: str):
    return validate_job_dict(
        {
            "model": {"path": data.pop("model", "models/tiny")},
            "data": {"train": "d/train.jsonl", "validation": "d/val.jsonl", "test": "d/test.jsonl"}
            | data,
            "output": {"dir": "runs/x"},
        }
    )


def test_address_order_is_flag_then_config_then_environment() -> None:
    env = {"RAY_ADDRESS": "http://env:8265"}
    assert resolve_address("http://flag:8265", "http://cfg:8265", env) == (
        "http://flag:8265",
        "--address",
    )
    assert resolve_address(None, "http://cfg:8265", env) == ("http://cfg:8265", "cluster.address")
    assert resolve_address(None, None, env) == ("http://env:8265", "RAY_ADDRESS")
    with pytest.raises(UserError, match="--address: no Ray cluster given"):
        resolve_address(None, None, {"RAY_ADDRESS": " "})
    assert api_url("head:8265/") == "http://head:8265"
    assert api_url("https://head:443") == "https://head:443"


def test_small_local_inputs_are_uploaded_big_or_absent_ones_must_be_on_the_cluster(
    tmp_path: Path,
) -> None:
    sizes = {
        tmp_path / "models/tiny": 5_000,
        tmp_path / "d/train.jsonl": 3_000,
        tmp_path / "d/val.jsonl": 9_000,  # over what is left of the budget
    }  # d/test.jsonl does not exist here
    plan = plan_submission(job(), tmp_path, 10_000, sizes.get)
    assert [(u.field, u.target) for u in plan.uploads] == [
        ("model.path", "inputs/model_path/tiny"),
        ("data.train", "inputs/data_train/train.jsonl"),
    ]
    assert plan.cluster_paths == {
        "data.validation": str(tmp_path / "d/val.jsonl"),
        "data.test": str(tmp_path / "d/test.jsonl"),
    }
    assert plan.oversized == {"data.validation": 9_000}
    c = plan.config
    assert c["model"]["path"] == "inputs/model_path/tiny"
    assert c["data"]["validation"] == str(tmp_path / "d/val.jsonl")
    assert c["output"]["dir"] == str(tmp_path / "runs/x")  # on the head, not in Ray's temp copy
    assert c["cluster"]["address"] == "auto"


def test_aliases_uris_and_shared_files_are_not_uploaded_twice(tmp_path: Path) -> None:
    j = job(model="minilm-l6", validation="s3://bucket/val?scheme=http", test="d/train.jsonl")
    plan = plan_submission(j, tmp_path, 10**9, lambda p: 10)
    assert [u.field for u in plan.uploads] == ["data.train"]
    assert plan.config["data"]["test"] == plan.config["data"]["train"]
    assert plan.config["model"]["path"] == "minilm-l6"
    assert plan.config["data"]["validation"] == "s3://bucket/val?scheme=http"


def test_runtime_env_carries_code_requirements_and_only_sealed_secrets(tmp_path: Path) -> None:
    env = {"HF_TOKEN": "hf_abcdefgh", "FOO": "bar"}
    sealed = sealed_env_vars(env, ["HF_TOKEN"], "cluster-token")
    runtime_env = build_runtime_env(tmp_path, [tmp_path / "launcher"], ["peft==0.13"], sealed, 60)
    assert runtime_env["working_dir"] == str(tmp_path)
    assert runtime_env["py_modules"] == [str(tmp_path / "launcher")]
    assert runtime_env["pip"] == ["peft==0.13"]
    assert runtime_env["env_vars"]["RAY_JOB_STOP_WAIT_TIME_S"] == "90"
    assert "hf_abcdefgh" not in repr(runtime_env) and SEALED_ENV in runtime_env["env_vars"]
    assert unseal(runtime_env["env_vars"][SEALED_ENV], "cluster-token") == {
        "HF_TOKEN": "hf_abcdefgh"
    }


def test_only_listed_secrets_travel_and_unlisted_lookalikes_are_named_not_shown() -> None:
    env = {
        "HF_TOKEN": "x" * 8,
        "WANDB_API_KEY": "y" * 8,
        "db_password": "z" * 8,
        "MY_CREDENTIAL": "w" * 8,
        "TOKENIZERS_PARALLELISM": "false",
        "RAY_AUTH_TOKEN": "r" * 64,
        "PATH": "/bin",
    }
    assert secret_names(env, ["MY_CREDENTIAL", "UNSET", "RAY_AUTH_TOKEN"]) == ["MY_CREDENTIAL"]
    assert unlisted_secret_names(env, ["MY_CREDENTIAL"]) == [
        "HF_TOKEN",
        "WANDB_API_KEY",
        "db_password",
    ]
    warnings = unlisted_warnings(env, ["MY_CREDENTIAL"])
    assert [w.split()[1] for w in warnings] == ["HF_TOKEN", "WANDB_API_KEY", "db_password"]
    assert not any(value in "".join(warnings) for value in ("x" * 8, "y" * 8, "z" * 8))
    assert unseal(sealed_env_vars(env, ["MY_CREDENTIAL"], "t")[SEALED_ENV], "t") == {
        "MY_CREDENTIAL": "w" * 8
    }
    assert sealed_env_vars(env, [], "t") == {}  # nothing listed: nothing travels
    assert sealed_env_vars(env, ["MY_CREDENTIAL"], None) == {}  # nothing to seal with
    assert sealed_env_vars({SEALED_ENV: "blob", "HF_TOKEN": "x"}, [], "t") == {SEALED_ENV: "blob"}


def test_sealed_secrets_need_the_same_token() -> None:
    blob = seal({"K": "value"}, "token-a")
    assert "value" not in blob and unseal(blob, "token-a") == {"K": "value"}
    with pytest.raises(ValueError, match="another cluster token"):
        unseal(blob, "token-b")


def test_redact_masks_every_secret_value_longest_first() -> None:
    env = {"API_KEY": "abcd1234", "SHORT_TOKEN": "on", "OTHER_SECRET": "abcd1234zz"}
    values = secret_values(env)
    assert values == ["abcd1234zz", "abcd1234"]
    assert redact("k=abcd1234zz j=abcd1234 on", values) == f"k={MASK} j={MASK} on"


def test_token_file_is_owner_only_from_creation(tmp_path: Path) -> None:
    old = os.umask(0)  # even a permissive umask must not widen it
    try:
        path = write_token_file(tmp_path / "ray_auth_token", "t0ken")
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_token({"RAY_AUTH_TOKEN_PATH": str(path)}) == "t0ken"
    assert load_token({"RAY_AUTH_TOKEN": " envtoken\n"}) == "envtoken"


def test_ids_sizes_and_slurm_dispatch() -> None:
    job_id = new_submission_id("tiny")
    assert job_id.startswith("ftlaunch-tiny-") and not is_slurm_job_id(job_id)
    assert is_slurm_job_id("12345")
    upload = {"option": "--max-upload", "minimum": 0, "maximum": MAX_UPLOAD_LIMIT}
    assert parse_size("100MB", **upload) == 100 * 10**6 and parse_size("0", **upload) == 0
    assert parse_size("100MiB", **upload) == 100 * 2**20  # one meaning per unit, as ByteSize
    for bad in ("lots", "-1MB", "10GB"):
        with pytest.raises(UserError, match="--max-upload"):
            parse_size(bad, **upload)
    assert parse_size("64MB", "--shard-size") == parse_size("64 mb", "--shard-size") == 64 * 10**6
    with pytest.raises(UserError, match="--shard-size: must be at least 1 B"):
        parse_size("0", "--shard-size")


def test_the_upload_budget_counts_what_symbolic_links_bring(tmp_path: Path) -> None:
    from launcher.commands.submit import tree_size, write_bundle
    from launcher.submit_plan import SubmissionPlan, Upload

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "big.bin").write_bytes(b"x" * 5000)
    data = tmp_path / "d"
    data.mkdir()
    (data / "train.jsonl").write_bytes(b"y" * 1000)
    (data / "linked").symlink_to(elsewhere)  # a folder that looks empty to a plain walk
    (data / "big-link.bin").symlink_to(elsewhere / "big.bin")
    assert tree_size(data) == 11_000
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    write_bundle(bundle, SubmissionPlan({}, [Upload("data.train", data, "inputs/d")]))
    uploaded = sum(p.stat().st_size for p in (bundle / "inputs").rglob("*") if p.is_file())
    assert uploaded == tree_size(data)  # the budget counts exactly what travels
    plan = plan_submission(job(train=str(data)), tmp_path, 10_000, tree_size)
    assert "data.train" in plan.oversized and "data.train" not in [u.field for u in plan.uploads]
    (data / "loop").symlink_to(data)
    with pytest.raises(UserError, match="symbolic link loop"):
        tree_size(data)
