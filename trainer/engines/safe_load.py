"""Read checkpoint files that another process wrote without running anything they name.

A torch checkpoint is a pickle, and unpickling runs whatever callable the file names: DeepSpeed's
checkpoint engine loads with `weights_only=False`, and torch DCP (Accelerate's FSDP layout)
unpickles its `.metadata` and its non-tensor entries the same way. Whoever can write a committed
checkpoint (a shared directory, a copied run, a rogue rank) would get code execution on every
rank at `--resume` or at an automatic restart. So every load on a resume or export path goes
through this module:

- torch files (`.pt`, `.bin`, `.pkl`) load with `weights_only=True` and, per file kind, an
  explicit allowlist of the few non-tensor types that engine's state holds (`allowlist_for`):
  DeepSpeed's loss scaler, ZeRO stage enum and fragment address; numpy arrays for Accelerate's
  RNG state; nothing beyond tensors and plain containers elsewhere;
- DCP `.metadata` is pickle protocol 4, which torch's weights-only unpickler does not read, so it
  goes through `_MetadataUnpickler`, which resolves only the DCP metadata classes, torch.Size,
  dtypes and layouts (its file names are confined to the DCP directory); DCP's non-tensor
  entries load with `weights_only=True` (`SafeLoadPlanner`).

`refuse_unsafe_files` checks every pickle of a checkpoint directory before an engine touches any
of it, statically (the globals a file names, without unpickling it), so a refusal names the file;
the engines' own loads are restricted too (`SafeCheckpointEngine`, `safe_dcp_loads`), so a file
swapped after the check is refused as well.
"""

from __future__ import annotations

import io
import pickle
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import torch

from trainer.formats.checkpoints import UnsafeCheckpointError

_DCP_METADATA = "torch.distributed.checkpoint.metadata"
_DCP_ALLOWED = {
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
# Files DeepSpeed writes (directly, or under Accelerate's DeepSpeed plugin).
_DEEPSPEED_FILE = re.compile(r"(^mp_rank_\d+_model_states\.pt$|^zero_pp_rank_\d+_.*\.pt$)")
_NUMPY_FILE = re.compile(r"^random_states_\d+\.pkl$")  # Accelerate's per-process RNG state
_PICKLE_SUFFIXES = (".pt", ".bin", ".pkl")
_ZIP_MAGIC = b"PK\x03\x04"


def allowlist_for(name: str) -> list[Any]:
    """The non-tensor types a checkpoint file called `name` may hold (beyond what torch's
    weights-only unpickler always allows: tensors, containers, numbers, strings)."""
    if _DEEPSPEED_FILE.match(name):
        from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
        from deepspeed.runtime.zero.config import ZeroStageEnum
        from deepspeed.utils.tensor_fragment import fragment_address

        return [LossScaler, DynamicLossScaler, ZeroStageEnum, fragment_address]
    if _NUMPY_FILE.match(name):
        numpy_core: Any = getattr(np, "_core", None) or np.core
        return [numpy_core.multiarray._reconstruct, np.ndarray, np.dtype, type(np.dtype("uint32"))]
    return []


def load_torch_file(path: Path, map_location: Any = "cpu", mmap: bool = False) -> Any:
    """`torch.load` with `weights_only=True` and the allowlist of this kind of file.

    Raises:
        UnsafeCheckpointError: the file names anything else (nothing of it ran).
    """
    try:
        with torch.serialization.safe_globals(allowlist_for(path.name)):
            return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as exc:
        raise UnsafeCheckpointError(f"{path}: {_reason(exc)}") from None


def refuse_unsafe_files(directory: Path, label: str) -> None:
    """Check every pickle under `directory` (a checkpoint or one rank's part of it) before
    anything loads it; `label` names the directory in errors (e.g. `step-40`).

    Raises:
        UnsafeCheckpointError: naming the first file that refers to anything outside its
            allowlist, or DCP metadata that does.
    """
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        where = f"{label}/{path.relative_to(directory).as_posix()}"
        if path.name == ".metadata":
            _check_dcp(path.parent, where)
        elif path.suffix in _PICKLE_SUFFIXES:
            with path.open("rb") as fh:
                _check_torch_bytes(fh, path.name, where)


def _check_torch_bytes(fh: Any, name: str, where: str) -> None:
    """Statically list the globals a torch.save file names (nothing is unpickled) and refuse
    any outside the allowlist; a legacy (non-zip) file gets a weights-only load instead."""
    is_zip = fh.read(4) == _ZIP_MAGIC
    fh.seek(0)
    with torch.serialization.safe_globals(allowlist_for(name)):
        try:
            if is_zip:
                unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(fh)
            else:
                torch.load(fh, map_location="cpu", weights_only=True)
                unsafe = []
        except (pickle.UnpicklingError, RuntimeError, ValueError) as exc:
            raise UnsafeCheckpointError(f"{where}: {_reason(exc)}") from None
    if unsafe:
        raise UnsafeCheckpointError(
            f"{where}: refers to {', '.join(sorted(unsafe))}, which no checkpoint of ftlaunch "
            "holds; refusing to load it (unpickling it could run code)"
        )


def _check_dcp(dcp_dir: Path, where: str) -> None:
    """The metadata through the restricted unpickler, then each non-tensor entry statically."""
    from torch.distributed.checkpoint.metadata import BytesStorageMetadata, MetadataIndex

    metadata = read_dcp_metadata(dcp_dir, where)
    for key, entry in metadata.state_dict_metadata.items():
        if not isinstance(entry, BytesStorageMetadata):
            continue  # tensors: DCP itself reads them with weights_only=True
        info = metadata.storage_data[MetadataIndex(key)]
        with (dcp_dir / info.relative_path).open("rb") as fh:
            fh.seek(info.offset)
            _check_torch_bytes(io.BytesIO(fh.read(info.length)), "", f"{where} entry {key}")


class _MetadataUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        is_dtype = module == "torch" and isinstance(getattr(torch, name, None), torch.dtype)
        if (module, name) not in _DCP_ALLOWED and not is_dtype:
            raise pickle.UnpicklingError(f"DCP metadata refers to {module}.{name}: not allowed")
        return super().find_class(module, name)


def read_dcp_metadata(dcp_dir: Path, where: str | None = None) -> Any:
    """A DCP directory's `.metadata`, read without resolving anything but DCP's own metadata
    types; the files it names must lie directly in `dcp_dir`. `where` names it in errors.

    Raises:
        UnsafeCheckpointError: the metadata names another type, or a file outside `dcp_dir`.
    """
    where = where or str(dcp_dir / ".metadata")
    try:
        with (dcp_dir / ".metadata").open("rb") as fh:
            metadata = _MetadataUnpickler(fh).load()
    except (pickle.UnpicklingError, EOFError, AttributeError, TypeError) as exc:
        raise UnsafeCheckpointError(f"{where}: {_reason(exc)}") from None
    for info in (getattr(metadata, "storage_data", None) or {}).values():
        name = getattr(info, "relative_path", "")
        if not name or PurePosixPath(name).name != name or name in (".", ".."):
            raise UnsafeCheckpointError(f"{where}: names {name!r}, which is not a file beside it")
    return metadata


def safe_reader(path: Path) -> Any:
    """DCP's FileSystemReader with the metadata read by the restricted unpickler above."""
    return _reader_class()(str(path))


def _reader_class() -> type:
    from torch.distributed.checkpoint.filesystem import FileSystemReader
    from torch.distributed.checkpoint.metadata import StorageMeta

    class SafeReader(FileSystemReader):
        def read_metadata(self, *args: Any, **kwargs: Any) -> Any:
            metadata = read_dcp_metadata(Path(self.path))
            if getattr(metadata, "storage_meta", None) is None:
                metadata.storage_meta = StorageMeta()
            metadata.storage_meta.load_id = self.load_id
            return metadata

    return SafeReader


def _planner_class() -> type:
    from torch.distributed.checkpoint._traverse import set_element
    from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner

    class SafeLoadPlanner(DefaultLoadPlanner):
        """DCP's default planner, with non-tensor entries loaded weights-only."""

        def load_bytes(self, read_item: Any, value: io.BytesIO) -> None:
            fqn = read_item.dest_index.fqn
            try:
                loaded = torch.load(value, weights_only=True)
            except pickle.UnpicklingError as exc:
                raise UnsafeCheckpointError(f"DCP entry {fqn}: {_reason(exc)}") from None
            if self.flatten_state_dict:
                set_element(self.original_state_dict, self.mappings[fqn], loaded)
            else:
                self.state_dict[fqn] = loaded

    return SafeLoadPlanner


@contextmanager
def safe_dcp_loads() -> Iterator[None]:
    """While active, DCP loads that name `FileSystemReader` and `DefaultLoadPlanner` through
    their modules (Accelerate's FSDP `load_state` does, with no way to pass our own) get the
    restricted reader and planner above. Restored on exit."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import default_planner, state_dict_loader

    # (module, attribute): the reader Accelerate names, the planner it names, and the planner
    # `dcp.load` falls back to when given none.
    slots = [
        (dcp, "FileSystemReader", _reader_class()),
        (default_planner, "DefaultLoadPlanner", _planner_class()),
        (state_dict_loader, "DefaultLoadPlanner", _planner_class()),
    ]
    saved = [(module, name, getattr(module, name)) for module, name, _ in slots]
    for module, name, replacement in slots:
        setattr(module, name, replacement)
    try:
        yield
    finally:
        for module, name, original in saved:
            setattr(module, name, original)


class SafeCheckpointEngine:
    """DeepSpeed's checkpoint engine with every `load` weights-only (DeepSpeed's own loads with
    `weights_only=False`); saving and everything else goes to the engine it wraps."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def load(self, path: str, map_location: Any = None) -> Any:
        return load_torch_file(Path(path), map_location=map_location)


def guard_deepspeed_loads(engine: Any) -> None:
    """Route a DeepSpeed engine's checkpoint loads through SafeCheckpointEngine (idempotent)."""
    if not isinstance(engine.checkpoint_engine, SafeCheckpointEngine):
        engine.checkpoint_engine = SafeCheckpointEngine(engine.checkpoint_engine)


def _reason(exc: BaseException) -> str:
    """The line of an unpickling error that says what was refused (torch's weights-only error
    starts with advice to load with weights_only=False, which is exactly what must not happen)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    naming = [line for line in lines if "GLOBAL" in line or "not allowed" in line]
    return (naming or lines or [type(exc).__name__])[0]
