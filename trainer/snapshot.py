"""Keep the best model's weights in memory so the test split is scored on the best, not the last.

Under ZeRO-3 each rank holds only its partition of every parameter (`ds_tensor`), so each rank
copies just that: the snapshot costs 1/world of the model per rank. Under ZeRO 0-2 parameters are
whole on every rank and are copied as they are.
"""

from __future__ import annotations

import torch


def capture_weights(module: torch.nn.Module) -> list[torch.Tensor]:
    return [_local_storage(p).detach().clone() for p in module.parameters()]


def restore_weights(module: torch.nn.Module, snapshot: list[torch.Tensor]) -> None:
    """Write a snapshot back. Only the module weights: enough to evaluate and save, not to train on."""
    with torch.no_grad():
        for param, saved in zip(module.parameters(), snapshot, strict=True):
            _local_storage(param).copy_(saved)


def _local_storage(param: torch.nn.Parameter) -> torch.Tensor:
    return param.ds_tensor if hasattr(param, "ds_tensor") else param.data
