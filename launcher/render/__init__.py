"""`ftlaunch render`: ready-to-apply manifests for cloud GPU pools, one pure function per target.

`render(target, job, options)` returns the documents (dicts) of the manifest; the command in
`launcher/commands/render.py` only loads the job, dumps YAML and writes it. See docs/cloud.md.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from launcher.errors import UserError
from launcher.render.cloud import render_aws, render_gcp
from launcher.render.common import RenderContext, RenderOptions
from launcher.render.kuberay import render_raycluster, render_rayjob
from launcher.render.shape import ShapeFlags, node_shape
from launcher.render.skypilot import render_skypilot
from trainer.config import JobConfig

Renderer = Callable[[RenderContext], list[dict[str, Any]]]
TARGETS: dict[str, Renderer] = {
    "kuberay-rayjob": render_rayjob,
    "kuberay-raycluster": render_raycluster,
    "ray-aws": render_aws,
    "ray-gcp": render_gcp,
    "skypilot": render_skypilot,
}

__all__ = ["TARGETS", "RenderOptions", "ShapeFlags", "check_target", "render"]


def check_target(target: str) -> Renderer:
    """The renderer for `target`.

    Raises:
        UserError: an unknown target (the line lists the known ones).
    """
    if target not in TARGETS:
        raise UserError(f"TARGET: unknown target {target!r}; known: {', '.join(TARGETS)}")
    return TARGETS[target]


def render(target: str, job: JobConfig, options: RenderOptions) -> list[dict[str, Any]]:
    """The manifest for `target`: its YAML documents, in the order they are applied.

    Raises:
        UserError: an unknown target, a flag the target cannot use, or workers that cannot be
            placed on the rendered nodes (the line names the field or flag).
    """
    renderer = check_target(target)
    shape = node_shape(job, options.shape)
    return renderer(RenderContext(job, shape, options))
