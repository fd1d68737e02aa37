"""The saver process for real: a save snapshotted into shared memory is written by it and
committed after; a saver SIGKILLed while it writes fails that save loudly and commits nothing.

One rank, a plain-file checkpoint store (trainer/local.py's sink), no model: the DeepSpeed path
through it is covered by the runs of test_fault_tolerance.py and test_elastic_resume.py.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import psutil
import pytest
import torch

from trainer.engines.background import SaveFailed
from trainer.formats.checkpoints import COMPLETE_MARKER
from trainer.local import LocalCheckpointSink
from trainer.loop.saves import BackgroundSaves

STATE = {"world_size": 1, "step": 1}


def saver_processes() -> list[psutil.Process]:
    return [
        p for p in psutil.Process().children() if "trainer.engines.saver" in " ".join(p.cmdline())
    ]


def save(saves: BackgroundSaves, sink: LocalCheckpointSink, tag: str, weights: torch.Tensor):
    local = sink.local_dir(tag)
    snapshot = saves.snapshot(local)
    snapshot.add_torch({"w": weights}, local / "ds" / "optim_states.pt")
    snapshot.add_bytes(b"{}", local / "trainer_state_rank0.json")
    saves.start(tag, snapshot, STATE)
    return local


@pytest.mark.timeout(120)
def test_a_save_lands_then_a_killed_saver_fails_its_save_and_commits_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RANK", "0")
    sink = LocalCheckpointSink(tmp_path / "checkpoints", keep_last=5, wait_s=60)
    saves = BackgroundSaves(sink, timeout_s=60)
    weights = torch.randn(16_000_000)  # 64 MB: a write long enough to be caught inside
    try:
        save(saves, sink, "step-1", weights)
        assert saves.wait() >= 0
        committed = tmp_path / "checkpoints" / "step-1"
        assert (committed / COMPLETE_MARKER).exists()
        loaded = torch.load(committed / "ds" / "optim_states.pt", weights_only=True)["w"]
        assert torch.equal(loaded, weights)
        [saver] = saver_processes()  # one long-lived saver, reused by every save

        landed = None
        for attempt in range(2, 6):
            tag = f"step-{attempt}"
            target = save(saves, sink, tag, weights + attempt) / "ds" / "optim_states.pt"
            deadline = time.monotonic() + 30
            while not target.exists() and time.monotonic() < deadline:
                time.sleep(0.0005)
            os.kill(saver.pid, signal.SIGKILL)
            try:
                saves.wait()
            except SaveFailed as exc:
                landed = (tag, str(exc))
                break
            [saver] = saver_processes()  # the write finished first: a new saver, try again
        assert landed, "every kill missed the write"
        tag, error = landed
        assert "died mid-save" in error or "closed its socket" in error
        assert not (tmp_path / "checkpoints" / tag).exists()  # nothing committed
        # The next save starts a fresh saver and lands.
        save(saves, sink, "step-9", weights)
        saves.wait()
        assert (tmp_path / "checkpoints" / "step-9" / COMPLETE_MARKER).exists()
    finally:
        saves.close()
        assert saver_processes() == []
