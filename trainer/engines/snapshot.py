"""Keep the best model's weights in memory so the test split is scored on the best, not the last.

Under ZeRO-3 each rank holds only its partition of every parameter (`ds_tensor`), so each rank
copies just that: the snapshot costs about 1/world of the model per rank. ZeRO-3 also keeps small
parameters (below `stage3_param_persistence_threshold`, e.g. LoRA and LayerNorm weights) gathered
in full between steps, and forward reads that full copy without re-gathering, so for those the
full tensor is saved and restored too. Under ZeRO 0-2 parameters are whole on every rank.

Only parameters that train are kept: frozen ones (a PEFT method's base model) never change, so
the snapshot of a LoRA run is the size of the adapter, not of the model.
"""

from __future__ import annotations

import torch

Snapshot = list[tuple[torch.Tensor, torch.Tensor | None]]


def capture_weights(module: torch.nn.Module) -> Snapshot:
    _reshard_fsdp(module)
    snapshot: Snapshot = []
    for param in _trained(module):
        partition = getattr(param, "ds_tensor", None)
        if partition is None:
            snapshot.append((_local(param.data).detach().clone(), None))
        else:
            full = param.data.detach().clone() if _is_gathered(param) else None
            snapshot.append((partition.detach().clone(), full))
    return snapshot


def restore_weights(module: torch.nn.Module, snapshot: Snapshot) -> None:
    """Write a snapshot back. Only the module weights: enough to evaluate and save, not to train on."""
    _reshard_fsdp(module)
    with torch.no_grad():
        for param, (saved, saved_full) in zip(_trained(module), snapshot, strict=True):
            partition = getattr(param, "ds_tensor", None)
            (_local(param.data) if partition is None else partition).copy_(saved)
            if saved_full is not None and _is_gathered(param):
                param.data.copy_(saved_full)


def _trained(module: torch.nn.Module) -> list[torch.nn.Parameter]:
    return [p for p in module.parameters() if p.requires_grad]


def _is_gathered(param: torch.nn.Parameter) -> bool:
    return param.data.numel() == getattr(param, "ds_numel", -1) and param.data.numel() > 0


def _local(tensor: torch.Tensor) -> torch.Tensor:
    """This rank's shard of an FSDP2 DTensor (a view: writing it writes the parameter)."""
    to_local = getattr(tensor, "to_local", None)
    return to_local() if to_local is not None else tensor


def _reshard_fsdp(module: torch.nn.Module) -> None:
    from torch.distributed.fsdp import FSDPModule

    for sub in module.modules():
        if isinstance(sub, FSDPModule):
            sub.reshard()
