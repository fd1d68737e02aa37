"""`ftlaunch render TARGET CONFIG`: print (or write with --out) the manifest that runs the job on
a cloud GPU pool. The rendering is `launcher.render.render`; this shell loads the job, dumps
the YAML, says what the cluster must provide, and writes the file without replacing another."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from launcher.config_loading import load_job_config
from launcher.errors import UserError
from launcher.render import RenderOptions, check_target, render
from trainer.config import JobConfig

HEADER = "# Rendered by `ftlaunch render {target} {config}`; docs/cloud.md says how to apply it.\n"


def render_to(
    target: str,
    config: Path,
    overrides: list[str],
    options: RenderOptions,
    out: Path | None,
    force: bool,
    echo: Callable[[str], None],
    warn: Callable[[str], None],
) -> None:
    """Render `config` for `target`; print it, or write it to `out` (never over a file unless
    `force`). Warnings (paths the cluster may not see) go to `warn`.

    Raises:
        UserError: an unknown target, a bad config or flag, workers that do not fit the nodes,
            or an `out` that exists (without `force`) or cannot be written.
    """
    check_target(target)  # before the config: an unknown target is the first thing to say
    job = load_job_config(config, overrides)
    documents = render(target, job, options)
    text = HEADER.format(target=target, config=config) + dump_documents(documents)
    for line in cluster_warnings(target, job, options):
        warn(f"warning: {line}")
    if out is None:
        echo(text)
        return
    write_new(out, text, force)
    warn(f"wrote {out}")


class _BlockDumper(yaml.SafeDumper):
    """Multi-line strings (scripts, the job file) as `|` blocks, so the manifest reads as
    written; PyYAML falls back to quoting where a block cannot hold the text exactly."""


def _represent_str(dumper: yaml.SafeDumper, text: str) -> yaml.ScalarNode:
    style = "|" if "\n" in text else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", text, style=style)


_BlockDumper.add_representer(str, _represent_str)


def dump_documents(documents: list[dict[str, Any]]) -> str:
    """The manifest's documents as one YAML stream (`---` between them)."""
    return yaml.dump_all(documents, Dumper=_BlockDumper, sort_keys=False, width=100)


def cluster_warnings(target: str, job: JobConfig, options: RenderOptions) -> list[str]:
    """What the rendered cluster needs that ftlaunch cannot ship: the job's local inputs (the
    manifest carries the job file, not the data) and, for a RayJob, a volume for the results."""
    lines = []
    fields = {
        "model.path": job.model.path,
        "data.train": job.data.train,
        "data.validation": job.data.validation,
        "data.test": job.data.test,
    }
    for field, value in fields.items():
        if value and "://" not in value and Path(value).expanduser().exists():
            lines.append(
                f"{field}: {value} is a path on this machine; the cluster's head reads it at the "
                "same path (bake it into the image or mount it there), or use an hf:// or "
                "s3:// URI"
            )
    if target == "kuberay-rayjob" and not options.output_pvc:
        lines.append(
            "--output-pvc: not given, so output.dir is on the head pod and is deleted with the "
            "cluster when the job finishes (shutdownAfterJobFinishes); name a "
            "PersistentVolumeClaim to keep the model and checkpoints"
        )
    return lines


def write_new(path: Path, text: str, force: bool) -> None:
    """Write `text` to `path` through a temporary file and a rename; refuse to replace an
    existing file unless `force`.

    Raises:
        UserError: `path` exists (without `force`), is a directory, or cannot be written.
    """
    if path.is_dir():
        raise UserError(f"--out: {path} is a directory")
    if path.exists() and not force:
        raise UserError(f"--out: {path} exists; pass --force to replace it")
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        temporary.write_text(text)
        if force:
            os.replace(temporary, path)
        else:  # a hard link never replaces a file that appeared since the check
            os.link(temporary, path)
    except FileExistsError:
        raise UserError(f"--out: {path} exists; pass --force to replace it") from None
    except OSError as exc:
        raise UserError(f"--out: cannot write {path}: {exc.strerror or exc}") from None
    finally:
        temporary.unlink(missing_ok=True)
