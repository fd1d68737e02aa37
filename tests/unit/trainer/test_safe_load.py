"""Checkpoint files are read without running what they name: a pickle that would run a command
is refused with the file named, and the command never runs, whichever loader meets it first
(the pre-load scan, DeepSpeed's checkpoint engine, DCP's metadata or its non-tensor entries)."""

from __future__ import annotations

import os
import pickle
import shlex
from pathlib import Path

import numpy as np
import pytest
import torch

from trainer.engines.safe_load import (
    SafeCheckpointEngine,
    load_torch_file,
    read_dcp_metadata,
    refuse_unsafe_files,
    safe_dcp_loads,
)
from trainer.formats.checkpoints import UnsafeCheckpointError


class Payload:
    """Unpickling this runs `touch MARKER`: what an attacker would plant in a checkpoint."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {shlex.quote(str(self.marker))}",))


def deepspeed_state() -> dict:
    """What DeepSpeed's model and optimizer states really hold beyond tensors."""
    from deepspeed.runtime.fp16.loss_scaler import LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return {
        "module": {"w": torch.ones(3)},
        "loss_scaler": LossScaler(1.0),
        "zero_stage": ZeroStageEnum.gradients,
        "fragment": fragment_address(numel=3, start=0),
        "ds_config": {"train_batch_size": 8},
    }


def test_genuine_files_of_every_kind_pass_and_load(tmp_path: Path) -> None:
    ckpt = tmp_path / "step-4"
    (ckpt / "ds").mkdir(parents=True)
    (ckpt / "acc").mkdir()
    torch.save(deepspeed_state(), ckpt / "ds" / "mp_rank_00_model_states.pt")
    torch.save({"numpy": np.random.get_state()}, ckpt / "acc" / "random_states_0.pkl")
    torch.save({"state": {0: {"step": torch.tensor(2.0)}}}, ckpt / "acc" / "optimizer.bin")
    torch.save([torch.zeros(2), torch.empty(0)], ckpt / "best_rank0.pt")
    refuse_unsafe_files(ckpt, "step-4")
    assert load_torch_file(ckpt / "ds" / "mp_rank_00_model_states.pt")["zero_stage"] == 2
    assert load_torch_file(ckpt / "acc" / "random_states_0.pkl")["numpy"][0] == "MT19937"


@pytest.mark.parametrize(
    "name", ["ds/mp_rank_00_model_states.pt", "acc/random_states_1.pkl", "acc/scheduler.bin"]
)
def test_a_planted_pickle_is_refused_naming_the_file_and_never_runs(
    tmp_path: Path, name: str
) -> None:
    marker = tmp_path / "ran"
    ckpt = tmp_path / "step-8"
    (ckpt / name).parent.mkdir(parents=True)
    torch.save({"module": {"w": torch.ones(1)}, "x": Payload(marker)}, ckpt / name)
    with pytest.raises(UnsafeCheckpointError, match=rf"^step-8/{name}: refers to posix\.system"):
        refuse_unsafe_files(ckpt, "step-8")
    with pytest.raises(UnsafeCheckpointError, match=r"posix\.system"):
        load_torch_file(ckpt / name)
    with pytest.raises(UnsafeCheckpointError, match=r"posix\.system"):  # DeepSpeed's own loads
        SafeCheckpointEngine(inner=None).load(str(ckpt / name), map_location="cpu")
    assert not marker.exists()


def test_a_type_allowed_for_one_kind_of_file_is_refused_in_another(tmp_path: Path) -> None:
    torch.save(deepspeed_state(), tmp_path / "scheduler.bin")  # DeepSpeed types, not its file
    with pytest.raises(UnsafeCheckpointError, match="LossScaler"):
        refuse_unsafe_files(tmp_path, "step-1")


def test_a_legacy_format_pickle_is_loaded_weights_only(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    path = tmp_path / "optimizer.bin"
    torch.save({"x": Payload(marker)}, path, _use_new_zipfile_serialization=False)
    with pytest.raises(UnsafeCheckpointError, match=r"posix\.system"):
        refuse_unsafe_files(tmp_path, "step-2")
    assert not marker.exists()


def save_dcp(directory: Path, extra: object) -> None:
    import torch.distributed.checkpoint as dcp

    dcp.save({"model.w": torch.arange(4.0), "extra": extra}, checkpoint_id=directory, no_dist=True)


def test_dcp_metadata_and_entries_are_read_without_running_anything(tmp_path: Path) -> None:
    import torch.distributed.checkpoint as dcp

    good, bad = tmp_path / "good" / "pytorch_model_fsdp_0", tmp_path / "bad" / "optimizer_0"
    marker = tmp_path / "ran"
    save_dcp(good, "adamw")
    save_dcp(bad, Payload(marker))
    refuse_unsafe_files(good.parent, "step-3")
    with pytest.raises(UnsafeCheckpointError, match=r"^step-3/optimizer_0/\.metadata entry extra"):
        refuse_unsafe_files(bad.parent, "step-3")
    from torch.distributed.checkpoint.api import CheckpointException

    target = {"model.w": torch.zeros(4), "extra": None}
    # DCP wraps what a rank raised in its CheckpointException, with the message inside.
    with safe_dcp_loads(), pytest.raises(CheckpointException, match=r"DCP entry extra: .*posix"):
        dcp.load(target, storage_reader=dcp.FileSystemReader(bad), no_dist=True)  # as Accelerate
    assert not marker.exists()
    with safe_dcp_loads():  # the same load of genuine files works, and the patch is undone after
        dcp.load(target, storage_reader=dcp.FileSystemReader(good), no_dist=True)
    assert target["extra"] == "adamw" and target["model.w"].tolist() == [0.0, 1.0, 2.0, 3.0]
    assert dcp.FileSystemReader.__name__ == "FileSystemReader"


def test_dcp_metadata_that_names_code_or_a_file_elsewhere_is_refused(tmp_path: Path) -> None:
    dcp_dir = tmp_path / "pytorch_model_fsdp_0"
    save_dcp(dcp_dir, 1)
    metadata = read_dcp_metadata(dcp_dir)
    for info in metadata.storage_data.values():
        info.relative_path = "../../elsewhere.distcp"
    (dcp_dir / ".metadata").write_bytes(pickle.dumps(metadata))
    with pytest.raises(UnsafeCheckpointError, match="not a file beside it"):
        read_dcp_metadata(dcp_dir)
    marker = tmp_path / "ran"
    (dcp_dir / ".metadata").write_bytes(pickle.dumps(Payload(marker)))
    with pytest.raises(UnsafeCheckpointError, match=r"posix\.system: not allowed"):
        refuse_unsafe_files(tmp_path, "step-5")
    assert not marker.exists()
