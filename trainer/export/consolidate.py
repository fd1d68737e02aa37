"""Consolidate a committed checkpoint into a plain Hugging Face model directory, one tensor at a
time: `python -m trainer.export.consolidate CHECKPOINT_DIR OUT_DIR [--adapter-only]` (what
`ftlaunch export` runs).

Both engines' checkpoints are read tensor by tensor (trainer/export/readers.py). The safetensors
file is written by hand: the header (every name, dtype, shape, offset) is known from shapes alone,
then each tensor is produced, written and dropped, so peak memory stays near one tensor rather
than the whole model.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from trainer.config.errors import UnsupportedConfigError
from trainer.config.spec import RunSpec
from trainer.export.peft import check_reloads, export_peft
from trainer.export.readers import Producer, Tensors, engine_tensors
from trainer.export.save import write_tokenizer_and_labels
from trainer.formats.checkpoints import CheckpointStore, CorruptCheckpointError
from trainer.model.build import classifier_config

SAFETENSORS_DTYPES = {
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.int64: "I64",
}


def export_names(tensors: Tensors) -> Iterator[tuple[str, torch.Size, Producer]]:
    """The full fine-tuning state under plain transformers names (PEFT runs are exported by
    trainer/export/peft.py, which lets peft merge its own modules)."""
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
            fh.write(tensor.numpy().data.cast("B"))  # no extra copy of the tensor
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
    return export_peft(tensors, spec, out_dir, adapter_only)


def _export_full(tensors: Tensors, spec: RunSpec, out_dir: Path) -> Path:
    from transformers import AutoConfig, AutoTokenizer

    write_safetensors(out_dir / "model.safetensors", list(export_names(tensors)))
    causal = spec.job.model.is_causal_lm()
    if causal:
        AutoConfig.from_pretrained(spec.model_dir).save_pretrained(out_dir)
        AutoTokenizer.from_pretrained(spec.model_dir).save_pretrained(out_dir)
    else:
        classifier_config(spec.model_dir, spec.label_names).save_pretrained(out_dir)
        write_tokenizer_and_labels(spec, out_dir)
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
