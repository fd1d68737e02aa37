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


def reshard_snapshot(module: torch.nn.Module, saved: list[Snapshot], rank: int) -> Snapshot:
    """This rank's share of a snapshot that `len(saved)` ranks took (`saved[r]` is rank r's), for
    the layout `module` has now: whole tensors stay whole, ZeRO-3 partitions and FSDP2 shards are
    joined and cut again for this world size.

    Raises:
        ValueError: the snapshot does not match the module's trained parameters.
    """
    _reshard_fsdp(module)
    world = torch.distributed.get_world_size()
    params = _trained(module)
    if any(len(s) != len(params) for s in saved):
        raise ValueError("best-weights snapshot does not match the model's trained parameters")
    resharded: Snapshot = []
    for index, param in enumerate(params):
        pieces = [s[index][0] for s in saved]
        if getattr(param, "ds_tensor", None) is not None:
            resharded.append(_zero3_share(param, pieces, rank, world))
        elif _is_dim0_sharded(param):
            resharded.append((_dim0_share(param, pieces, rank, world), None))
        else:
            resharded.append((pieces[0], None))
    return resharded


def _zero3_share(
    param: torch.nn.Parameter, pieces: list[torch.Tensor], rank: int, world: int
) -> tuple[torch.Tensor, torch.Tensor | None]:
    full = torch.cat(pieces)[: param.ds_numel]  # pyright: ignore[reportAttributeAccessIssue] (ZeRO-3 attributes)
    part = param.ds_tensor.numel()  # pyright: ignore[reportAttributeAccessIssue]
    padded = torch.nn.functional.pad(full, (0, part * world - full.numel()))
    whole = full.view(param.ds_shape).clone() if _is_gathered(param) else None  # pyright: ignore[reportAttributeAccessIssue]
    return padded[rank * part : (rank + 1) * part].clone(), whole


def _is_dim0_sharded(param: torch.nn.Parameter) -> bool:
    """An FSDP2 parameter sharded on dim 0 (a DTensor with a Shard(0) placement); replicated
    ones are whole on every rank."""
    placements = getattr(param.data, "placements", ())
    return any(getattr(p, "dim", None) == 0 for p in placements)


def _dim0_share(
    param: torch.nn.Parameter, pieces: list[torch.Tensor], rank: int, world: int
) -> torch.Tensor:
    """FSDP2 shards dim 0 as `torch.chunk` does (trailing ranks may hold nothing)."""
    full = torch.cat(pieces, dim=0)
    chunks = torch.chunk(full, world, dim=0)
    target = _local(param.data)
    share = chunks[rank] if rank < len(chunks) else full.new_empty((0, *full.shape[1:]))
    if share.shape != target.shape:
        raise ValueError(
            f"FSDP shard of shape {tuple(target.shape)} cannot take {tuple(share.shape)}"
        )
    return share.clone()
