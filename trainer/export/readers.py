"""Read a checkpoint's model weights tensor by tensor, whichever engine wrote them, without
unpickling anything arbitrary. Each reader returns name -> (shape, producer): the tensor is only
materialised when its producer is called.

    ds/                           DeepSpeed: module state (ZeRO 0-2) or per-rank flat fp32
                                  partitions (ZeRO-3)
    acc/model.safetensors         Accelerate DDP: the full model (rank 0 wrote it)
    acc/pytorch_model_fsdp_0/     Accelerate FSDP: torch DCP, `.metadata` plus one `__R_0.distcp`
                                  per rank, keys `model.<name>`, each tensor sharded along dim 0
    acc/pytorch_model/            DeepSpeed through Accelerate: DeepSpeed's layout, as ds/

DeepSpeed's files are opened with `torch.load(mmap=True, weights_only=True)` and the types their
state holds allowlisted, so only the pages of the tensor being read are touched; DCP's
`.metadata` goes through the restricted unpickler and tensor payloads are read by DCP itself,
one requested tensor at a time, so peak memory stays near the largest tensor. Both come from
trainer/engines/safe_load.py, which resume uses too.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from trainer.engines.safe_load import load_torch_file, read_dcp_metadata, safe_reader
from trainer.formats.checkpoints import ACC_TAG, DS_TAG, MODEL_STATES

Producer = Callable[[], torch.Tensor]
Tensors = dict[str, tuple[torch.Size, Producer]]
FSDP_MODEL_DIR = "pytorch_model_fsdp_0"
DCP_MODEL_PREFIX = "model."


def _load(path: Path) -> dict[str, Any]:
    """A DeepSpeed checkpoint file, unpickling only the types its kind of file may hold."""
    return load_torch_file(path, mmap=True)


def checkpoint_tensors(ds_dir: Path) -> Tensors:
    """name -> (shape, producer) of the full fp32 model, without materialising any tensor yet."""
    stage3_states = sorted(ds_dir.glob("zero_pp_rank_*_mp_rank_00_model_states.pt"), key=_rank_of)
    if not stage3_states:  # ZeRO 0-2 in fp32: the module state dict holds every full weight
        module = _load(ds_dir / Path(MODEL_STATES).name)["module"]
        return {name: (tensor.shape, lambda t=tensor: t) for name, tensor in module.items()}
    # ZeRO-3: each rank holds a 1/world slice of every parameter in one flat fp32 buffer per
    # param group, parameters back to back, each padded to ceil(numel / world).
    rank_states = [_load(p) for p in stage3_states]
    zero_files = sorted(ds_dir.glob("zero_pp_rank_*_mp_rank_00_optim_states.pt"), key=_rank_of)
    flat_groups = [_load(p)["optimizer_state_dict"]["fp32_flat_groups"] for p in zero_files]
    world = len(flat_groups)
    tensors: Tensors = {}
    for group, shapes in enumerate(rank_states[0]["param_shapes"]):
        offset = 0
        for name, shape in shapes.items():
            numel, part = math.prod(shape), math.ceil(math.prod(shape) / world)
            pieces = [(flat_groups[r][group], offset) for r in range(world)]
            tensors[name] = (
                torch.Size(shape),
                lambda p=pieces, n=numel, k=part, s=shape: _join(p, k, n, s),
            )
            offset += part
    for name, shape in (rank_states[0].get("frozen_param_shapes") or {}).items():
        fragments = [s["frozen_param_fragments"][name] for s in rank_states]
        numel = math.prod(shape)
        tensors[name] = (
            torch.Size(shape),
            lambda f=fragments, n=numel, s=shape: torch.cat(f)[:n].view(s),
        )
    return tensors


def engine_tensors(checkpoint_dir: Path) -> Tensors:
    """name -> (shape, producer) for whichever engine wrote the checkpoint."""
    if (checkpoint_dir / DS_TAG).is_dir():
        return checkpoint_tensors(checkpoint_dir / DS_TAG)
    acc = checkpoint_dir / ACC_TAG
    if (acc / "pytorch_model").is_dir():  # DeepSpeed through Accelerate: DeepSpeed's own layout
        return checkpoint_tensors(acc / "pytorch_model")
    return accelerate_tensors(acc)


def _join(
    pieces: list[tuple[torch.Tensor, int]], part: int, numel: int, shape: Any
) -> torch.Tensor:
    # torch.cat already copies out of the memory-mapped partitions: one tensor-sized buffer.
    return torch.cat([flat[offset : offset + part] for flat, offset in pieces])[:numel].view(shape)


def _rank_of(path: Path) -> int:
    return int(path.name.split("_")[3])


def accelerate_tensors(acc_dir: Path) -> Tensors:
    """name -> (shape, producer) of the full fp32 model in an Accelerate DDP or FSDP checkpoint.

    Raises:
        FileNotFoundError: neither layout is there.
    """
    if (acc_dir / "model.safetensors").is_file():
        return _safetensors_tensors(acc_dir / "model.safetensors")
    if (acc_dir / FSDP_MODEL_DIR / ".metadata").is_file():
        return _dcp_tensors(acc_dir / FSDP_MODEL_DIR)
    raise FileNotFoundError(f"{acc_dir}: no Accelerate model state (DDP, FSDP or DeepSpeed)")


def _safetensors_tensors(path: Path) -> Tensors:
    from safetensors import safe_open

    handle = safe_open(str(path), framework="pt")  # memory-mapped; get_tensor reads one tensor
    return {
        name: (torch.Size(handle.get_slice(name).get_shape()), lambda n=name: handle.get_tensor(n))
        for name in handle.keys()  # noqa: SIM118 (safe_open is not a mapping)
    }


def _dcp_tensors(dcp_dir: Path) -> Tensors:
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    metadata = read_dcp_metadata(dcp_dir)
    tensors: Tensors = {}
    for key, entry in metadata.state_dict_metadata.items():
        if not isinstance(entry, TensorStorageMetadata) or not key.startswith(DCP_MODEL_PREFIX):
            continue
        tensors[key.removeprefix(DCP_MODEL_PREFIX)] = (
            torch.Size(entry.size),
            lambda k=key, e=entry: _load_one(dcp_dir, k, e),
        )
    return tensors


def _load_one(dcp_dir: Path, key: str, entry: Any) -> torch.Tensor:
    """Assemble one full tensor from its shards (DCP reads only the chunks that overlap it)."""
    from torch.distributed.checkpoint.state_dict_loader import load

    target = {key: torch.empty(entry.size, dtype=entry.properties.dtype)}
    load(target, storage_reader=safe_reader(dcp_dir), no_dist=True)
    return target[key]
