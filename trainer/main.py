"""The one worker entry point: pick the recipe for `model.task` and run it.

`cluster/` names this function by its dotted path (`trainer.main:run_job`) and imports it inside
the worker process, so nothing on the head imports torch.
"""

from __future__ import annotations

from typing import Any

import torch.distributed as dist

from trainer.config.spec import RunSpec
from trainer.loop.run import Recipe, run_recipe
from trainer.protocols import WorkerIO


def recipe_for(spec: RunSpec) -> Recipe:
    if spec.job.model.is_causal_lm():
        from trainer.recipes.causal_lm import CausalLmRecipe

        return CausalLmRecipe(spec)
    from trainer.recipes.classification import ClassificationRecipe

    return ClassificationRecipe(spec)


def run_job(spec: RunSpec, io: WorkerIO) -> dict[str, Any]:
    """Fine-tune, test and save as `spec` says; returns the summary (rank 0 reports it too).

    An elastic job (cluster.num_workers {min, max}) may run on fewer workers than it was
    launched with: the spec is adjusted to this world size first (grad_accum, so the global
    batch stays the same).
    """
    job = spec.job.at_world_size(dist.get_world_size())
    if job is not spec.job:
        spec = spec.model_copy(update={"job": job})
    return run_recipe(spec, io, recipe_for(spec))
