"""Elastic resume without Ray: a checkpoint written by N workers resumes on M.

Engine state (one spawned group per world size, every engine in turn, see elastic_ranks.py): a
2-worker checkpoint of each engine is loaded on 3 workers and saved again, and that one on 1
worker. After each load the fp32 weights, both Adam moments, the optimizer step counts, the module
weights and the best-so-far weights must equal, bit for bit, what the 2 workers held when they
saved: read with the engines' own accessors, not with ftlaunch's readers.

The whole job as a user runs it (`ftlaunch run` preempted on 2 workers, `--resume` refused on 3
because the global batch cannot be kept, resumed on 1 with every training row consumed once per
epoch, the change in metrics.jsonl and summary.json) is
tests/integration/test_fault_tolerance.py::test_sigterm_commits_a_checkpoint_exits_3_and_resumes_on_1_or_3_workers.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.integration.conftest import free_port
from tests.integration.elastic_ranks import ENGINES, save_then_reload

pytestmark = [pytest.mark.dist]

WORLDS = ((2, "", "step-2"), (3, "step-2", "step-3"), (1, "step-3", "step-4"))


@pytest.fixture(scope="module")
def engine_reports(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[dict[str, Any]]]:
    import torch
    import torch.multiprocessing as mp

    root = tmp_path_factory.mktemp("elastic-engines")
    for world, source, tag in WORLDS:
        mp.spawn(
            save_then_reload,
            args=(world, free_port(), str(root), source, tag),
            nprocs=world,
            join=True,
        )
    return {
        name: [torch.load(root / f"{name}-{tag}.pt", weights_only=True) for *_, tag in WORLDS]
        for name in ENGINES
    }


def _same(a: dict[str, Any], b: dict[str, Any]) -> bool:
    import torch

    def equal(x: Any, y: Any) -> bool:
        if isinstance(x, torch.Tensor):
            return isinstance(y, torch.Tensor) and x.dtype == y.dtype and torch.equal(x, y)
        if isinstance(x, (list, tuple)):
            return len(x) == len(y) and all(equal(p, q) for p, q in zip(x, y, strict=True))
        return x == y

    return a.keys() == b.keys() and all(equal(a[k], b[k]) for k in a)


@pytest.mark.timeout(900)
@pytest.mark.parametrize("engine", list(ENGINES))
def test_engine_state_resumes_on_3_then_1_workers_bit_exact(
    engine_reports: dict[str, list[dict[str, Any]]], engine: str
) -> None:
    saved, on_three, on_one = engine_reports[engine]
    assert [r["world"] for r in (saved, on_three, on_one)] == [2, 3, 1]
    assert [on_three["saved_world"], on_one["saved_world"]] == [2, 3]
    assert [r["grad_accum"] for r in (saved, on_three, on_one)] == [3, 2, 6]  # global batch 12
    # Something moved: training changed the weights, and the moments are not zero.
    assert not _same(saved["initial"], saved["best"])
    assert not _same(saved["best"], saved["weights"])
    assert any(values[1].abs().sum() > 0 for values in saved["state"].values())
    assert saved["adam_steps"] == [2.0]
    for resumed in (on_three, on_one):
        assert _same(resumed["state"], saved["state"])  # fp32 weights, exp_avg, exp_avg_sq
        assert _same(resumed["weights"], saved["weights"])  # what the module computes with
        assert _same(resumed["best"], saved["best"])  # the best-so-far snapshot, resharded
        assert resumed["adam_steps"] == saved["adam_steps"]
        assert resumed["progress"] == saved["progress"]
