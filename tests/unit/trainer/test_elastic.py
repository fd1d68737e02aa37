"""Elastic resume decisions without processes: the grad_accum that keeps the global batch, the
`cluster.num_workers: {min, max}` rules, what a resuming launcher changes, the Ray request, and how
many ranks wrote a checkpoint."""

from __future__ import annotations

import pytest

from cluster.placement.plan import placement_plan
from launcher.config_loading import validate_job_dict
from launcher.errors import UserError
from launcher.resume import keep_global_batch
from tests.unit.cluster.test_placement import three_gpu_nodes
from trainer.config.schema import JobConfig, grad_accum_for
from trainer.loop.reshard import saved_world_size


def job(workers: object, micro: int = 2, grad_accum: int = 3) -> JobConfig:
    return validate_job_dict(
        {
            "model": {"path": "m"},
            "data": {"train": "a", "validation": "b", "test": "c"},
            "training": {"micro_batch_size": micro, "grad_accum": grad_accum},
            "cluster": {"num_workers": workers},
        }
    )


@pytest.mark.parametrize(("workers", "expected"), [(1, 6), (2, 3), (3, 2), (6, 1)])
def test_grad_accum_keeps_the_global_batch(workers: int, expected: int) -> None:
    assert grad_accum_for(12, 2, workers) == expected


def test_a_batch_that_cannot_be_kept_names_the_three_numbers() -> None:
    with pytest.raises(ValueError, match=r"training\.grad_accum") as info:
        grad_accum_for(12, 2, 4)
    assert "micro_batch_size 2 x 4 workers = 8 does not divide it" in str(info.value)
    assert "global batch of 12 samples" in str(info.value)


def test_at_world_size_keeps_the_batch_and_changes_nothing_else() -> None:
    two = job(2)
    three = two.at_world_size(3)
    assert (three.cluster.num_workers, three.training.grad_accum) == (3, 2)
    assert three.global_batch_size() == two.global_batch_size() == 12
    assert three.model_copy(update={"training": two.training, "cluster": two.cluster}) == two
    assert two.at_world_size(2) is two


def test_elastic_workers_define_the_batch_at_max_and_must_keep_it_at_every_size() -> None:
    elastic = job({"min": 1, "max": 3}, grad_accum=6)
    assert (elastic.cluster.min_workers(), elastic.cluster.max_workers()) == (1, 3)
    assert elastic.cluster.is_elastic() and elastic.global_batch_size() == 36
    assert [elastic.at_world_size(w).training.grad_accum for w in (1, 2, 3)] == [18, 9, 6]
    with pytest.raises(UserError) as info:  # 2 x 3 x 3 = 18 samples: 2 workers x 2 cannot
        job({"min": 2, "max": 3}, grad_accum=3)
    assert any("cannot be kept on 2 workers" in line for line in info.value.messages)


@pytest.mark.parametrize(
    ("workers", "problem"),
    [
        ({"min": 3, "max": 2}, "cluster.num_workers.min: must be <= cluster.num_workers.max"),
        ({"min": 0, "max": 2}, "cluster.num_workers.min"),
        ({"max": 2}, "cluster.num_workers.min"),
        ({"min": 1, "max": 2, "mx": 3}, "did you mean 'cluster.num_workers.max'"),
    ],
)
def test_bad_worker_ranges_are_one_line_naming_the_field(workers: object, problem: str) -> None:
    with pytest.raises(UserError) as info:
        job(workers, grad_accum=6)
    assert any(problem in line for line in info.value.messages), info.value.messages


def test_elastic_workers_cannot_be_pinned_to_nodes() -> None:
    raw = job(2).model_dump(mode="json")
    raw["cluster"] |= {"num_workers": {"min": 1, "max": 2}, "num_nodes": 2}
    with pytest.raises(UserError, match=r"cluster\.num_nodes: pins workers"):
        validate_job_dict(raw)


def test_a_resume_on_other_workers_keeps_the_checkpoints_batch() -> None:
    saved = {"spec": {"job": job(2).model_dump(mode="json")}}
    same, note = keep_global_batch(job(2), saved)
    assert note is None and same == job(2)
    three, note = keep_global_batch(job(3), saved)  # the user's config says grad_accum 3
    assert three.training.grad_accum == 2 and three.global_batch_size() == 12
    assert note == (
        "keeping the checkpoint's global batch of 12 samples (micro_batch_size 2 x grad_accum 3 "
        "x 2 workers): training.grad_accum 3 -> 2 on 3 workers"
    )
    assert keep_global_batch(job(1), saved)[0].training.grad_accum == 6


def test_a_resume_that_cannot_keep_the_batch_is_refused_naming_the_numbers() -> None:
    saved = {"spec": {"job": job(2).model_dump(mode="json")}}
    with pytest.raises(UserError) as info:
        keep_global_batch(job(4), saved)
    (line,) = info.value.messages
    assert line.startswith("training.grad_accum: the global batch of 12 samples cannot be kept")
    assert "micro_batch_size 2 x 4 workers = 8" in line
    assert line.endswith("written with micro_batch_size 2 x grad_accum 3 x 2 workers")


def test_ray_gets_a_min_max_pair_only_for_an_elastic_job() -> None:
    fixed = placement_plan(job(2).cluster, three_gpu_nodes())
    assert fixed.scaling_kwargs()["num_workers"] == 2 and len(fixed.bundles()) == 2
    elastic = placement_plan(job({"min": 1, "max": 3}, grad_accum=6).cluster, three_gpu_nodes())
    assert elastic.scaling_kwargs()["num_workers"] == (1, 3)
    assert len(elastic.bundles()) == 1  # reserved before the start: what must fit


def test_the_writing_world_size_is_counted_from_the_rank_states() -> None:
    names = ["trainer_state_rank1.json", "ds/step-2/x.pt", "trainer_state_rank0.json"]
    assert saved_world_size(names) == 2
    with pytest.raises(ValueError, match=r"ranks \[0, 2\]"):
        saved_world_size(["trainer_state_rank0.json", "trainer_state_rank2.json"])
    with pytest.raises(ValueError, match=r"expected 0\.\.N-1"):
        saved_world_size(["ds/x.pt"])
