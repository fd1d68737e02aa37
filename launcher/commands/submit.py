"""`ftlaunch submit`: send a job to a remote Ray cluster through the Ray Jobs API.

The job's entrypoint is `ftlaunch run job.yaml` on the head node, so a submitted run behaves
exactly like `ftlaunch run --address` there: same run directory, checkpoints and metrics.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from cluster.auth.secrets import (
    missing_listed,
    redact,
    sealed_env_vars,
    secret_names,
    secret_values,
    unlisted_warnings,
)
from cluster.auth.token import load_token
from cluster.ray.jobs import (
    FTLAUNCH_TAG,
    TERMINAL,
    JobsClient,
    api_url,
    check_access,
    plain_http_warning,
)
from launcher.config_loading import load_job_config
from launcher.errors import UserError
from launcher.sizes import format_size
from launcher.submit_plan import (
    BUNDLE_CONFIG,
    SubmissionPlan,
    build_runtime_env,
    entrypoint,
    new_submission_id,
    path_check_entrypoint,
    plan_submission,
    resolve_address,
)
from trainer.config import JobConfig

PATH_CHECK_TIMEOUT_S = 120
CODE_PACKAGES = ("launcher", "cluster", "trainer")
Echo = Callable[[str], None]


@dataclass(frozen=True)
class SubmitRequest:
    """What `ftlaunch submit` was asked, option by option."""

    config: Path
    overrides: list[str] = field(default_factory=list)
    address: str | None = None
    follow: bool = False
    insecure: bool = False
    max_upload: int = 100 * 10**6
    requirements: list[str] = field(default_factory=list)


def run_submit(request: SubmitRequest, echo: Echo, note: Echo) -> int:
    """Submit; returns the exit code (0, or with --follow the job's: see `follow_job`).

    Raises:
        UserError: bad config, secrets not set, paths the cluster cannot see.
        cluster.errors.ClusterError: unreachable cluster, open cluster, token problems.
    """
    config, address, max_upload = request.config, request.address, request.max_upload
    job = load_job_config(config, request.overrides)
    missing = missing_listed(os.environ, job.cluster.secret_env)
    if missing:
        raise UserError(*(f"cluster.secret_env: {name} is not set here" for name in missing))
    target, source = resolve_address(address, job.cluster.address, os.environ)
    url = api_url(target)
    for warning in [
        plain_http_warning(url),
        *unlisted_warnings(os.environ, job.cluster.secret_env),
    ]:
        if warning:
            note(warning)
    token = check_access(url, load_token(), source, allow_insecure=request.insecure)
    client = JobsClient(url, token, source)
    plan = plan_submission(job, Path.cwd(), max_upload, tree_size)
    if plan.cluster_paths:
        check_visible_on_cluster(client, plan, max_upload)
    sealed = _sealed_secrets(job, token, url)
    job_id = new_submission_id(job.name)
    with tempfile.TemporaryDirectory(prefix="ftlaunch-submit-") as bundle:
        write_bundle(Path(bundle), plan)
        runtime_env = build_runtime_env(
            Path(bundle), code_dirs(), request.requirements, sealed, job.training.preemption_grace_s
        )
        metadata = {
            FTLAUNCH_TAG: "1",
            "name": job.name,
            "config": config.name,
            "output_dir": plan.config["output"]["dir"],
        }
        client.submit(entrypoint(), job_id, runtime_env, metadata)  # uploads the bundle
    echo(job_id)
    note(f"submitted to {url}; output.dir on the head: {plan.config['output']['dir']}")
    if not request.follow:
        note(f"follow it with: ftlaunch logs {job_id} --follow --address {url}")
        return 0
    return follow_job(client, job_id, note, secret_values(os.environ, job.cluster.secret_env))


def _sealed_secrets(job: JobConfig, token: str | None, url: str) -> dict[str, str]:
    """The listed secrets, sealed with the cluster's token.

    Raises:
        UserError: secrets are listed but there is no token to seal them with (an open
            cluster, or none found here).
    """
    if token is None and secret_names(os.environ, job.cluster.secret_env):
        raise UserError(
            f"cluster.secret_env: secrets travel sealed with the cluster's Ray auth token, and "
            f"{url} has none (no token auth, or none found here); they are not sent"
        )
    return sealed_env_vars(os.environ, job.cluster.secret_env, token)


def tree_size(path: Path) -> int | None:
    """Bytes that bundling `path` uploads (None when it does not exist here): what symbolic
    links point at counts, since `write_bundle` copies it.

    Raises:
        UserError: a symbolic link loop (the bundle would never end).
    """
    if path.is_file():
        return path.stat().st_size
    if not path.is_dir():
        return None
    return _bundled_bytes(path, frozenset())


def _bundled_bytes(directory: Path, ancestors: frozenset[str]) -> int:
    real = os.path.realpath(directory)
    if real in ancestors:
        raise UserError(f"{directory}: a symbolic link loop; it cannot be uploaded")
    total = 0
    with os.scandir(directory) as entries:
        for entry in entries:
            if entry.is_dir():  # follows links, as copytree does
                total += _bundled_bytes(Path(entry.path), ancestors | {real})
            elif entry.is_file():
                total += entry.stat().st_size
    return total


def write_bundle(bundle: Path, plan: SubmissionPlan) -> None:
    """The job's working directory: the resolved config and hard links (or copies) of the
    local inputs it names."""
    (bundle / BUNDLE_CONFIG).write_text(yaml.safe_dump(plan.config, sort_keys=False))
    for upload in plan.uploads:
        target = bundle / upload.target
        target.parent.mkdir(parents=True, exist_ok=True)
        if upload.source.is_dir():
            shutil.copytree(upload.source, target, copy_function=_link_or_copy)
        else:
            _link_or_copy(str(upload.source), str(target))


def _link_or_copy(source: str, target: str) -> str:
    try:
        os.link(source, target)
    except OSError:  # another filesystem, or links not allowed
        shutil.copy2(source, target)
    return target


def code_dirs() -> list[Path]:
    """ftlaunch's own package directories, shipped as py_modules (found without importing
    them: `trainer` would pull in nothing heavy, but there is no need to find out)."""
    dirs = []
    for name in CODE_PACKAGES:
        spec = importlib.util.find_spec(name)
        assert spec is not None and spec.submodule_search_locations  # our own packages
        dirs.append(Path(next(iter(spec.submodule_search_locations))))
    return dirs


def check_visible_on_cluster(client: JobsClient, plan: SubmissionPlan, max_upload: int) -> None:
    """Run a one-line job on the head that reports which of the paths it cannot see.

    Raises:
        UserError: one line per field whose path the cluster cannot see.
    """
    paths = sorted(set(plan.cluster_paths.values()))
    job_id = f"ftlaunch-pathcheck-{new_submission_id('x').rsplit('-', 1)[1]}"
    client.submit(path_check_entrypoint(paths), job_id, {}, {})
    deadline = time.monotonic() + PATH_CHECK_TIMEOUT_S
    while client.status(job_id) not in TERMINAL and time.monotonic() < deadline:
        time.sleep(0.5)
    logs = client.logs(job_id)
    if client.status(job_id) in TERMINAL:
        client.delete(job_id)  # leaves nothing behind in `ray job list`
    else:
        client.stop(job_id)
    marker = [line for line in logs.splitlines() if line.startswith("FTLAUNCH_MISSING=")]
    if not marker:
        raise UserError(
            f"data paths: could not check them on {client.url} (check job {job_id} gave no answer)"
        )
    missing = set(json.loads(marker[-1].split("=", 1)[1]))
    problems = []
    for name, path in plan.cluster_paths.items():
        if path in missing:
            size = plan.oversized.get(name)
            why = (
                f"too big to upload ({format_size(size)} > --max-upload {format_size(max_upload)})"
                if size is not None
                else "not found here either"
            )
            problems.append(
                f"{name}: {path} is not visible on the cluster's head node and is {why}; "
                "put it on storage the cluster can read (a shared path or an s3:// URI)"
            )
    if problems:
        raise UserError(*problems)


def follow_job(client: JobsClient, job_id: str, note: Echo, hidden: list[str]) -> int:
    """Stream the job's logs (secrets masked), then exit like it: SUCCEEDED 0, FAILED the
    driver's exit code (2 bad input, 1 training failed), STOPPED 3 (resumable with --resume)."""
    client.tail(job_id, lambda chunk: write_raw(redact(chunk, hidden)))
    return exit_code_of(client, job_id, note)


def write_raw(text: str) -> None:
    """Log chunks as they come (they need not end at a line break)."""
    sys.stdout.write(text)
    sys.stdout.flush()


def exit_code_of(client: JobsClient, job_id: str, note: Echo) -> int:
    status = client.status(job_id)
    deadline = time.monotonic() + 30  # logs can end a moment before the status turns final
    while status not in TERMINAL and time.monotonic() < deadline:
        time.sleep(0.5)
        status = client.status(job_id)
    info = client.info(job_id)
    note(f"job {job_id}: {status}")
    if status == "SUCCEEDED":
        return 0
    if status == "STOPPED":
        return 3
    code = info.driver_exit_code
    return code if code in (1, 2, 3) else 1
