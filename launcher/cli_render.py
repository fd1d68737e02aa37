"""`ftlaunch render`: a manifest for a cloud GPU pool (KubeRay, Ray's cluster launcher on AWS/GCP,
SkyPilot). Registered on the app by launcher/cli.py; the work is launcher/commands/render.py."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from launcher.cli_support import err_console, fail
from launcher.errors import USER_ERROR_EXIT_CODE, UserError

_TARGETS = "kuberay-rayjob, kuberay-raycluster, ray-aws, ray-gcp, skypilot"


def render(
    target: Annotated[str, typer.Argument(help=f"One of: {_TARGETS}.")],
    config: Annotated[Path, typer.Argument(help="Job YAML file.")],
    nodes: Annotated[
        int | None,
        typer.Option(
            help="Worker nodes (default: cluster.num_nodes, else as few as hold the job)."
        ),
    ] = None,
    gpus_per_node: Annotated[
        int | None, typer.Option(help="GPUs per worker node (default: what its workers need).")
    ] = None,
    cpus_per_node: Annotated[
        int | None, typer.Option(help="CPUs per worker node (default: what its workers need).")
    ] = None,
    memory_per_node: Annotated[
        str | None, typer.Option(help="Memory per worker node, e.g. 256GiB (default: derived).")
    ] = None,
    gpu_type: Annotated[
        str | None,
        typer.Option(help="H100, A100, L4, ... (KubeRay: the nvidia.com/gpu.product label)."),
    ] = None,
    image: Annotated[
        str | None,
        typer.Option(help="Image with ftlaunch (docker/Dockerfile); default ftlaunch:0.1.0."),
    ] = None,
    namespace: Annotated[str | None, typer.Option(help="Kubernetes namespace.")] = None,
    spot: Annotated[
        bool, typer.Option("--spot", help="Spot/preemptible workers (ray-aws, ray-gcp, skypilot).")
    ] = False,
    secret: Annotated[
        str, typer.Option(help="Kubernetes Secret with auth_token and the job's secret_env keys.")
    ] = "ftlaunch",
    output_pvc: Annotated[
        str | None,
        typer.Option(help="kuberay: PersistentVolumeClaim mounted on the head for output.dir."),
    ] = None,
    node_selector: Annotated[
        list[str] | None,
        typer.Option(help="kuberay: worker nodeSelector KEY=VALUE, repeatable."),
    ] = None,
    instance_type: Annotated[
        str | None, typer.Option(help="Worker machine type (default: from --gpu-type x GPUs).")
    ] = None,
    region: Annotated[
        str | None, typer.Option(help="Cloud region (ray-aws, ray-gcp, skypilot).")
    ] = None,
    project_id: Annotated[str | None, typer.Option(help="ray-gcp: the GCP project.")] = None,
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="Override a key: --set cluster.num_workers=16")
    ] = None,
    out: Annotated[Path | None, typer.Option(help="Write here instead of stdout.")] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing --out file.")] = False,
) -> None:
    """Print a ready manifest that runs the job on a cloud GPU pool (see docs/cloud.md)."""
    from launcher.commands.render import render_to
    from launcher.render import RenderOptions, ShapeFlags
    from launcher.render.common import DEFAULT_IMAGE
    from launcher.sizes import parse_size

    try:
        flags = ShapeFlags(
            nodes=nodes,
            gpus_per_node=gpus_per_node,
            cpus_per_node=cpus_per_node,
            memory_per_node=parse_size(memory_per_node, "--memory-per-node")
            if memory_per_node
            else None,
        )
        options = RenderOptions(
            shape=flags,
            gpu_type=gpu_type,
            image=image or DEFAULT_IMAGE,
            namespace=namespace,
            spot=spot,
            secret=secret,
            output_pvc=output_pvc,
            node_selector=_pairs(node_selector or [], "--node-selector"),
            instance_type=instance_type,
            region=region,
            project_id=project_id,
        )
        render_to(target, config, set_ or [], options, out, force, typer.echo, _print_stderr)
    except UserError as exc:
        fail(USER_ERROR_EXIT_CODE, *exc.messages)


def _print_stderr(line: str) -> None:
    err_console.print(line, markup=False)


def _pairs(items: list[str], option: str) -> tuple[tuple[str, str], ...]:
    pairs = []
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UserError(f"{option}: {item!r} is not KEY=VALUE")
        pairs.append((key.strip(), value.strip()))
    return tuple(pairs)
