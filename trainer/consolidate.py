"""Consolidate a committed checkpoint into a plain Hugging Face model directory, one tensor at a
time: `python -m trainer.consolidate CHECKPOINT_DIR OUT_DIR [--adapter-only]` (what `ftlaunch export`
runs).

Both engines' checkpoints are read (see trainer/checkpoint_formats.py for Accelerate's: DDP
safetensors, FSDP sharded DCP, DeepSpeed through Accelerate).

DeepSpeed's files are opened with `torch.load(mmap=True, weights_only=True)` and the three
DeepSpeed types its state holds allowlisted, so nothing arbitrary is ever unpickled and only the
pages of the tensor being written are read. The safetensors file is written by hand: the header
(every name, dtype, shape, offset) is known from shapes alone, then each tensor is produced,
written and dropped, so peak memory stays near one tensor rather than the whole model.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from trainer.checkpointing import ACC_TAG, DS_TAG, MODEL_STATES
from trainer.config.checkpoints import CheckpointStore, CorruptCheckpointError
from trainer.config.errors import UnsupportedConfigError
from trainer.config.spec import RunSpec

Producer = Callable[[], torch.Tensor]
SAFETENSORS_DTYPES = {
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.int64: "I64",
}


def _load(path: Path) -> dict[str, Any]:
    from deepspeed.runtime.fp16.loss_scaler import LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    with torch.serialization.safe_globals([LossScaler, ZeroStageEnum, fragment_address]):
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)


def checkpoint_tensors(ds_dir: Path) -> dict[str, tuple[torch.Size, Producer]]:
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
    tensors: dict[str, tuple[torch.Size, Producer]] = {}
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


def engine_tensors(checkpoint_dir: Path) -> dict[str, tuple[torch.Size, Producer]]:
    """name -> (shape, producer) for whichever engine wrote the checkpoint."""
    if (checkpoint_dir / DS_TAG).is_dir():
        return checkpoint_tensors(checkpoint_dir / DS_TAG)
    from trainer.checkpoint_formats import accelerate_tensors

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


def export_names(
    tensors: dict[str, tuple[torch.Size, Producer]],
) -> Iterator[tuple[str, torch.Size, Producer]]:
    """The full fine-tuning state under plain transformers names (PEFT runs are exported by
    trainer/peft_export.py, which lets peft merge its own modules)."""
    for name, (shape, produce) in tensors.items():
        yield name.removeprefix("base_model.model."), shape, produce


def write_safetensors(path: Path, entries: list[tuple[str, torch.Size, Producer]]) -> int:
    """Write the file tensor by tensor; returns its size. All tensors are written as fp32."""
    header: dict[str, Any] = {}
    offset = 0
    for name, shape, _ in entries:
        size = math.prod(shape) * 4
        header[name] = {
            "dtype": SAFETENSORS_DTYPES[torch.float32],
            "shape": list(shape),
            "data_offsets": [offset, offset + size],
        }
        offset += size
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * ((-len(encoded)) % 8)  # the format wants the data 8-byte aligned
    with path.open("wb") as fh:
        fh.write(len(encoded).to_bytes(8, "little"))
        fh.write(encoded)
        for name, shape, produce in entries:
            tensor = produce().detach().to(torch.float32).contiguous()
            if tensor.shape != shape:
                raise CorruptCheckpointError(
                    f"{name}: shape {tuple(tensor.shape)} != recorded {tuple(shape)}"
                )
            fh.write(memoryview(tensor.numpy()).cast("B"))  # no extra copy of the tensor
    return path.stat().st_size


def export_checkpoint(checkpoint_dir: Path, out_dir: Path, adapter_only: bool = False) -> Path:
    """Verify, consolidate and write `checkpoint_dir` as a model directory; reload it to check.

    Full fine-tuning streams tensor by tensor. A PEFT run's checkpoint holds only what trained, so
    its export rebuilds the peft model on the base from model.path (one model in memory), loads the
    trained tensors, and writes the merged model, or the adapter (`adapter_only`, or a method that
    cannot merge).
    """
    store = CheckpointStore(checkpoint_dir.parent)
    manifest = store.verify(checkpoint_dir.name)
    spec = RunSpec.model_validate(manifest["state"]["spec"])
    tensors = engine_tensors(checkpoint_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if spec.job.peft.method == "none":
        if adapter_only:
            raise UnsupportedConfigError(
                "--adapter-only: this run trained the full model (peft.method: none); there is no adapter"
            )
        return _export_full(tensors, spec, out_dir)
    from trainer.peft_export import export_peft

    return export_peft(tensors, spec, out_dir, adapter_only)


def _export_full(
    tensors: dict[str, tuple[torch.Size, Producer]], spec: RunSpec, out_dir: Path
) -> Path:
    from transformers import AutoConfig, AutoTokenizer

    write_safetensors(out_dir / "model.safetensors", list(export_names(tensors)))
    labels = spec.label_names
    causal = spec.job.model.is_causal_lm()
    if causal:
        config = AutoConfig.from_pretrained(spec.model_dir)
    else:
        config = AutoConfig.from_pretrained(
            spec.model_dir,
            num_labels=len(labels),
            id2label=dict(enumerate(labels)),
            label2id={n: i for i, n in enumerate(labels)},
        )
    config.save_pretrained(out_dir)
    AutoTokenizer.from_pretrained(spec.model_dir).save_pretrained(out_dir)
    if not causal:
        (out_dir / "label_map.json").write_text(json.dumps({"labels": labels}, indent=2) + "\n")
    from trainer.peft_export import check_reloads

    check_reloads(out_dir, causal)
    return out_dir


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    adapter_only = "--adapter-only" in args
    args = [a for a in args if a != "--adapter-only"]
    try:
        export_checkpoint(Path(args[0]), Path(args[1]), adapter_only)
    except UnsupportedConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (CorruptCheckpointError, FileNotFoundError, KeyError) as exc:
        print(f"error: {args[0]}: cannot export ({exc})", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
