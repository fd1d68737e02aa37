"""The snapshot pool and the saver's protocol, in one process: a state copied into shared memory
and written by the saver's own code must load as torch.save's file of it does, compactly, and a
message naming a path outside the checkpoint or a range outside the pool writes nothing."""

from __future__ import annotations

import collections
import json
import os
from pathlib import Path

import pytest
import torch

from trainer.engines.saver import Segments, handle, write_files
from trainer.engines.snapshot_pool import SnapshotPool, snapshot_raw_file, snapshot_torch_file


def saver_view(pool: SnapshotPool) -> Segments:
    """The pool as the saver process maps it (its own descriptors, as if sent over the socket)."""
    segments = Segments()
    for index in range(pool.segment_count):
        fd, size = pool.segment_fd(index)
        segments.add(index, os.dup(fd), size)
    return segments


def deepspeed_like_state() -> tuple[dict, torch.Tensor]:
    flat = torch.randn(10_000)  # ZeRO's flat buffer: the state holds views into it
    module = collections.OrderedDict(w=flat[:12].view(3, 4), b=flat[12:20])
    state = {
        "module": module,
        "optimizer": {"state": {0: {"exp_avg": torch.randn(5), "step": torch.tensor(7)}}},
        "param_shapes": [collections.OrderedDict(w=torch.Size([3, 4]))],
        "half": torch.ones(4, dtype=torch.bfloat16),
        "empty": torch.empty(0),
        "again": module["w"],  # one tensor reached twice
        "ds_version": "0.19",
        "global_steps": 3,
    }
    return state, flat


def test_a_snapshot_written_by_the_saver_loads_as_torch_save_and_stays_compact(
    tmp_path: Path,
) -> None:
    state, flat = deepspeed_like_state()
    pool = SnapshotPool(min_segment_bytes=1 << 20)
    reference = tmp_path / "reference.pt"
    torch.save(state, reference)  # the independent reference: torch's own file of the state
    job = snapshot_torch_file(pool, state, "ds/model_states.pt")
    flat.add_(1.0)  # training goes on after the snapshot: the file must hold the old values
    write_files(tmp_path, [job.as_json()], saver_view(pool))

    saved = torch.load(tmp_path / "ds/model_states.pt", weights_only=True)
    expected = torch.load(reference, weights_only=True)
    assert torch.equal(saved["module"]["w"], expected["module"]["w"])
    assert torch.equal(saved["module"]["b"], expected["module"]["b"])
    assert not torch.equal(saved["module"]["b"], flat[12:20])  # it moved; the file did not
    assert torch.equal(
        saved["optimizer"]["state"][0]["exp_avg"], state["optimizer"]["state"][0]["exp_avg"]
    )
    assert saved["optimizer"]["state"][0]["step"].item() == 7
    assert saved["half"].dtype == torch.bfloat16 and saved["empty"].numel() == 0
    assert saved["param_shapes"] == expected["param_shapes"]
    assert (saved["ds_version"], saved["global_steps"]) == ("0.19", 3)
    assert isinstance(saved["module"], collections.OrderedDict)
    # The views were copied alone (torch.save writes the whole 40 kB flat buffer) and once.
    assert (
        saved["again"].untyped_storage().data_ptr()
        == saved["module"]["w"].untyped_storage().data_ptr()
    )
    assert (tmp_path / "ds/model_states.pt").stat().st_size < reference.stat().st_size - 30_000


def test_the_pool_is_reused_from_save_to_save_and_grows_only_when_outgrown(
    tmp_path: Path,
) -> None:
    pool = SnapshotPool(min_segment_bytes=1 << 20)
    first = snapshot_torch_file(pool, {"x": torch.randn(1000)}, "a.pt")
    assert pool.segment_count == 1
    pool.reset()
    second = snapshot_torch_file(pool, {"x": torch.randn(1000)}, "a.pt")
    assert [r.as_json() for r in second.records] == [r.as_json() for r in first.records]
    assert pool.segment_count == 1
    pool.reset()
    snapshot_torch_file(pool, {"x": torch.randn(400_000)}, "big.pt")  # 1.6 MB: a second segment
    assert pool.segment_count == 2
    assert pool.used_bytes >= 1_600_000


def test_a_parameter_and_raw_bytes_go_through_the_pool_too(tmp_path: Path) -> None:
    pool = SnapshotPool(min_segment_bytes=1 << 20)
    weight = torch.nn.Parameter(torch.randn(6))  # not a plain tensor: its storage is copied whole
    jobs = [
        snapshot_torch_file(pool, [weight, torch.empty(0)], "best_rank0.pt"),
        snapshot_raw_file(pool, b'{"step": 4}', "trainer_state_rank0.json"),
    ]
    with torch.no_grad():
        weight.zero_()
    written = write_files(tmp_path, [j.as_json() for j in jobs], saver_view(pool))
    assert [p.name for p in written] == ["best_rank0.pt", "trainer_state_rank0.json"]
    loaded = torch.load(tmp_path / "best_rank0.pt", weights_only=True)
    assert loaded[0].abs().sum() > 0 and loaded[1].numel() == 0
    assert json.loads((tmp_path / "trainer_state_rank0.json").read_text()) == {"step": 4}


@pytest.mark.parametrize(
    ("name", "record", "error"),
    [
        ("../outside.pt", None, "must not contain '..'"),
        ("/etc/outside.pt", None, "must be a relative path"),
        ("ok.bin", ["x", 0, 0, 1 << 30], "outside pool segment 0"),
        ("ok.bin", ["x", 5, 0, 8], "unknown pool segment 5"),
        ("ok.bin", ["x", 0, "0", 8], "malformed record"),
    ],
)
def test_a_bad_message_fails_its_save_and_writes_nothing(
    tmp_path: Path, name: str, record: list | None, error: str
) -> None:
    pool = SnapshotPool(min_segment_bytes=1 << 20)
    job = snapshot_raw_file(pool, b"payload", "ok.bin").as_json()
    segments = saver_view(pool)
    root = tmp_path / "checkpoint"
    root.mkdir()
    bad = job | {"name": name} | ({"records": [record]} if record else {})
    assert handle({"op": "file", **bad}, [], segments) is None
    answer = handle({"op": "save", "id": 3, "root": str(root)}, [], segments)
    assert answer is not None and answer["id"] == 3 and error in answer["error"]
    assert not (tmp_path / "outside.pt").exists() and list(root.iterdir()) == []
    # The next save starts from an empty list: the bad file is not retried.
    assert handle({"op": "save", "id": 4, "root": str(root)}, [], segments) == {
        "id": 4,
        "error": None,
    }
