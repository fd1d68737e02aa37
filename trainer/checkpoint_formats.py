"""Read Accelerate's checkpoint layouts tensor by tensor, without unpickling anything arbitrary.

    acc/model.safetensors         DDP: the full model (rank 0 wrote it)
    acc/pytorch_model_fsdp_0/     FSDP: torch DCP, `.metadata` plus one `__R_0.distcp` per rank,
                                  keys `model.<name>`, each tensor sharded along dim 0
    acc/pytorch_model/            DeepSpeed through Accelerate: DeepSpeed's layout (consolidate.py)

DCP's `.metadata` is a pickle (protocol 4, which torch's weights-only unpickler does not read),
so it is read with an unpickler that resolves only the DCP metadata classes, torch.Size, dtypes
and layouts. Tensor payloads are read by DCP itself with `torch.load(weights_only=True)`, one
requested tensor at a time, so peak memory stays near the largest tensor.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

Producer = Callable[[], torch.Tensor]
FSDP_MODEL_DIR = "pytorch_model_fsdp_0"
DCP_MODEL_PREFIX = "model."
_DCP_METADATA = "torch.distributed.checkpoint.metadata"
_ALLOWED = {
    (_DCP_METADATA, name)
    for name in (
        "Metadata",
        "TensorStorageMetadata",
        "BytesStorageMetadata",
        "ChunkStorageMetadata",
        "TensorProperties",
        "MetadataIndex",
        "StorageMeta",
        "_MEM_FORMAT_ENCODING",
    )
} | {
    ("torch.distributed.checkpoint.filesystem", "_StorageInfo"),
    ("torch", "Size"),
    ("torch.serialization", "_get_layout"),
    ("pathlib", "PosixPath"),
}


class _MetadataUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        is_dtype = module == "torch" and isinstance(getattr(torch, name, None), torch.dtype)
        if (module, name) not in _ALLOWED and not is_dtype:
            raise pickle.UnpicklingError(f"DCP metadata refers to {module}.{name}: not allowed")
        return super().find_class(module, name)


def read_dcp_metadata(dcp_dir: Path) -> Any:
    with (dcp_dir / ".metadata").open("rb") as fh:
        return _MetadataUnpickler(fh).load()


def accelerate_tensors(acc_dir: Path) -> dict[str, tuple[torch.Size, Producer]]:
    """name -> (shape, producer) of the full fp32 model in an Accelerate DDP or FSDP checkpoint.

    Raises:
        FileNotFoundError: neither layout is there.
    """
    if (acc_dir / "model.safetensors").is_file():
        return _safetensors_tensors(acc_dir / "model.safetensors")
    if (acc_dir / FSDP_MODEL_DIR / ".metadata").is_file():
        return _dcp_tensors(acc_dir / FSDP_MODEL_DIR)
    raise FileNotFoundError(f"{acc_dir}: no Accelerate model state (DDP, FSDP or DeepSpeed)")


def _safetensors_tensors(path: Path) -> dict[str, tuple[torch.Size, Producer]]:
    from safetensors import safe_open

    handle = safe_open(str(path), framework="pt")  # memory-mapped; get_tensor reads one tensor
    return {
        name: (torch.Size(handle.get_slice(name).get_shape()), lambda n=name: handle.get_tensor(n))
        for name in handle.keys()  # noqa: SIM118 (safe_open is not a mapping)
    }


def _dcp_tensors(dcp_dir: Path) -> dict[str, tuple[torch.Size, Producer]]:
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    metadata = read_dcp_metadata(dcp_dir)
    tensors: dict[str, tuple[torch.Size, Producer]] = {}
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
    import torch.distributed.checkpoint as dcp

    target = {key: torch.empty(entry.size, dtype=entry.properties.dtype)}
    dcp.load(target, storage_reader=_SafeReader(dcp_dir), no_dist=True)
    return target[key]


def _reader_class() -> type:
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.metadata import StorageMeta

    class SafeReader(FileSystemReader):
        """DCP's reader with the metadata read by the restricted unpickler above."""

        def read_metadata(self, *args: Any, **kwargs: Any) -> Any:
            metadata = read_dcp_metadata(Path(self.path))
            if getattr(metadata, "storage_meta", None) is None:
                metadata.storage_meta = StorageMeta()
            metadata.storage_meta.load_id = self.load_id
            return metadata

    return SafeReader


def _SafeReader(path: Path) -> Any:  # noqa: N802 (reads like the class it builds)
    return _reader_class()(str(path))
