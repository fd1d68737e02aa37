"""Ray Train's default callbacks that ftlaunch leaves out exist under these names in the Ray the
project pins (a rename would silently keep them), and the lean trainer drops exactly those. Older
Rays (the pyproject floor) start neither helper: nothing is dropped there."""

from __future__ import annotations

import os

import pytest

from cluster.ray.lean_train import ONE_MACHINE_ENV, lean_torch_trainer, unused_callbacks


def callback_names(trainer_class: type) -> set[str]:
    from ray.train import ScalingConfig

    trainer = trainer_class(lambda: None, scaling_config=ScalingConfig(num_workers=1))
    return {type(c).__name__ for c in trainer._create_default_callbacks()}


@pytest.mark.parametrize("embedded", [True, False])
def test_the_lean_trainer_drops_exactly_the_unused_callbacks(
    embedded: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    import ray
    from packaging.version import Version
    from ray.train.torch import TorchTrainer

    for name in ONE_MACHINE_ENV:  # absent, and put back as it was after the test
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)
    everything = callback_names(TorchTrainer)
    unused = unused_callbacks(embedded)
    if Version(ray.__version__) >= Version("2.60"):
        assert unused <= everything, everything  # the names are this Ray's
    assert callback_names(lean_torch_trainer(embedded)) == everything - unused
    assert ("PlacementGroupCleanerCallback" in unused) is embedded
    assert all((os.environ.get(k) == v) is embedded for k, v in ONE_MACHINE_ENV.items())


def test_a_users_own_preemption_watcher_setting_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "1")
    lean_torch_trainer(embedded=True)
    assert os.environ["RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"] == "1"
