"""Resume a checkpoint written by N workers on M workers: the engine state is resharded at load
time, with no offline step.

- DeepSpeed ZeRO 0: the optimizer state sits whole in rank 0's model-states file; any world size
  loads it as it is.
- DeepSpeed ZeRO 1-3: each rank's file holds a 1/N slice of the fp32 weights and Adam moments.
  `write_universal` joins the slices into one full tensor per parameter, in DeepSpeed's own
  universal-checkpoint layout (`zero/<param>/{fp32,exp_avg,exp_avg_sq,step}.pt`), and DeepSpeed's
  universal loader cuts them for M ranks (`DeepSpeedEngine.load_universal_state`). The N-rank
  files are checked and read weights-only with the allowlist of trainer/engines/safe_load.py
  (as every resume load is); the universal files are written and read by this rank only, in a
  private temporary directory.
- Accelerate DDP: model, optimizer and schedule are whole in every checkpoint; Accelerate loads
  them for any world size (a rank with no `random_states_R.pkl` keeps its seeded RNG).
- Accelerate FSDP: torch DCP checkpoints are resharded by DCP itself at load time; every rank
  already reads the whole DCP directory.

The best-so-far weights (`best_rank{R}.pt`, each rank's share) are resharded by
`trainer/engines/snapshot.py:reshard_snapshot`.
"""

from __future__ import annotations

import math
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from trainer.config.errors import UnsupportedConfigError
from trainer.engines.base import Engine
from trainer.engines.safe_load import load_torch_file  # the one allowlist of checkpoint types
from trainer.formats.checkpoints import ACC_TAG, DS_TAG

STATE_KEYS = ("fp32", "exp_avg", "exp_avg_sq")
_TRAINER_STATE = re.compile(r"^trainer_state_rank(\d+)\.json$")
_OPTIM_FILES = "*zero_pp_rank_*_mp_rank_00_optim_states.pt"
_UNIVERSAL_DIR = "zero"

FullStates = dict[str, dict[str, torch.Tensor]]  # parameter name -> fp32 / exp_avg / exp_avg_sq


def saved_world_size(names: list[str]) -> int:
    """How many ranks wrote a checkpoint: one `trainer_state_rank{R}.json` each.

    Raises:
        ValueError: the ranks' files are not 0..N-1.
    """
    ranks = sorted(int(m.group(1)) for m in map(_TRAINER_STATE.match, names) if m)
    if not ranks or ranks != list(range(len(ranks))):
        raise ValueError(f"checkpoint holds training states of ranks {ranks}, expected 0..N-1")
    return len(ranks)


def is_trainer_state(name: str) -> bool:
    return _TRAINER_STATE.match(name) is not None


def load_resharded(engine: Engine, directory: Path) -> None:
    """Collective: restore the engine state of a checkpoint written by another number of ranks.

    Raises:
        UnsupportedConfigError: DeepSpeed through Accelerate (resume it on its own world size).
    """
    described = engine.describe()
    if described["backend"] == "accelerate":
        if described["strategy"] == "deepspeed":
            raise UnsupportedConfigError(
                "cluster.num_workers: a checkpoint of engine.strategy deepspeed through Accelerate "
                "resumes only on the number of workers that wrote it; use engine.backend "
                "deepspeed to change it"
            )
        engine.load_state(directory)  # DDP: whole states; FSDP: DCP reshards on load
        return
    with tempfile.TemporaryDirectory(prefix="ftlaunch-reshard-") as scratch:
        universal = Path(scratch) / directory.name
        if write_universal(directory, universal):
            engine.load_universal_state(universal)  # pyright: ignore[reportAttributeAccessIssue] (DeepSpeedEngine only; checked above)
        else:
            engine.load_state(directory)


def write_universal(ds_dir: Path, out_dir: Path) -> bool:
    """Write DeepSpeed's universal layout of the ZeRO 1-3 checkpoint in `ds_dir` to `out_dir`;
    False (nothing written) for ZeRO 0, whose files are the same for any world size.

    Raises:
        ValueError: the ranks' files do not describe whole parameters (corrupted or foreign).
    """
    optim_files = sorted(ds_dir.glob(_OPTIM_FILES), key=_rank_of)
    if not optim_files:
        return False
    states = [load_torch_file(path, mmap=True)["optimizer_state_dict"] for path in optim_files]
    model_states = sorted(ds_dir.glob("*model_states.pt"))
    shapes = load_torch_file(model_states[0], mmap=True)["param_shapes"]
    zero = out_dir / _UNIVERSAL_DIR
    zero.mkdir(parents=True)
    for path in model_states:  # the module, schedule and counters: read as they are
        (out_dir / path.name).symlink_to(path.resolve())
    stage3 = int(states[0]["zero_stage"]) == 3
    full = _zero3_states(states, shapes) if stage3 else _zero12_states(states, shapes)
    for name, tensors in full:
        _write_param(zero / name, tensors, _step(states[0], stage3))
    # DeepSpeed reads this one with weights_only=False: it is written here, by this rank, into its
    # private directory, from values already loaded with the allowlist above.
    torch.save(_global_state(states[0], stage3), zero / "optimizer_state.pt")
    return True


def _zero12_states(states: list[dict[str, Any]], shapes: list[dict[str, Any]]) -> Iterator:
    """ZeRO 1/2: each rank's flat partition of a parameter group holds fragments of some
    parameters (`param_slice_mappings`: name -> start and length); a parameter is the
    concatenation of its fragments in rank order."""
    for group, group_shapes in enumerate(shapes):
        pieces: dict[str, dict[str, list[torch.Tensor]]] = {}
        for state in states:
            flats = _zero12_flats(state, group)
            for name, address in state["param_slice_mappings"][group].items():
                parts = pieces.setdefault(name, {key: [] for key in STATE_KEYS})
                for key in STATE_KEYS:
                    parts[key].append(flats[key].narrow(0, address.start, address.numel))
        for name, shape in group_shapes.items():
            yield (
                name,
                {key: _whole(torch.cat(pieces[name][key]), shape, name) for key in STATE_KEYS},
            )


def _zero12_flats(state: dict[str, Any], group: int) -> dict[str, torch.Tensor]:
    moments = state["base_optimizer_state"]["state"][group]
    fp32 = state["single_partition_of_fp32_groups"][group]
    return {"fp32": fp32, "exp_avg": moments["exp_avg"], "exp_avg_sq": moments["exp_avg_sq"]}


def _zero3_states(states: list[dict[str, Any]], shapes: list[dict[str, Any]]) -> Iterator:
    """ZeRO-3: every parameter is cut into `world` slices of ceil(numel / world) elements (the
    last one padded), and each rank's flat group holds its slices back to back."""
    world = len(states)
    if any(len(state["fp32_flat_groups"]) != len(shapes) for state in states):
        raise ValueError("ZeRO-3 checkpoint: parameter sub-groups do not match parameter groups")
    for group, group_shapes in enumerate(shapes):
        flats = [_zero3_flats(state, group) for state in states]
        offset = 0
        for name, shape in group_shapes.items():
            numel = math.prod(shape)
            part = math.ceil(numel / world)
            tensors = {
                key: _whole(
                    torch.cat([flat[key].narrow(0, offset, part) for flat in flats])[:numel],
                    shape,
                    name,
                )
                for key in STATE_KEYS
            }
            offset += part
            yield name, tensors


def _zero3_flats(state: dict[str, Any], group: int) -> dict[str, torch.Tensor]:
    moments = state["optimizer_state_dict"]["state"][group]
    fp32 = state["fp32_flat_groups"][group]
    return {"fp32": fp32, "exp_avg": moments["exp_avg"], "exp_avg_sq": moments["exp_avg_sq"]}


def _whole(flat: torch.Tensor, shape: Any, name: str) -> torch.Tensor:
    if flat.numel() != math.prod(shape):
        raise ValueError(
            f"checkpoint parameter {name}: its slices hold {flat.numel()} values, "
            f"its shape {tuple(shape)} needs {math.prod(shape)}"
        )
    return flat.clone().view(shape)  # clone: out of the memory-mapped file


def _step(state: dict[str, Any], stage3: bool) -> torch.Tensor:
    optimizer = state["optimizer_state_dict"] if stage3 else state["base_optimizer_state"]
    return optimizer["state"][0]["step"]


def _write_param(directory: Path, tensors: dict[str, torch.Tensor], step: torch.Tensor) -> None:
    directory.mkdir(parents=True)
    for key, tensor in tensors.items():
        torch.save({"param": tensor}, directory / f"{key}.pt")
    torch.save(step, directory / "step.pt")


def _global_state(state: dict[str, Any], stage3: bool) -> dict[str, Any]:
    """`zero/optimizer_state.pt`: the loss scaling, clipping and parameter-group settings."""
    kept = ("loss_scaler", "dynamic_loss_scale", "overflow", "clip_grad", "ds_version")
    common = {key: state[key] for key in kept if key in state}
    if not stage3:
        return common | {"param_groups": state["base_optimizer_state"]["param_groups"]}
    optimizer = state["optimizer_state_dict"]
    step = {"state": {0: {"step": _step(state, stage3)}}}
    return common | {"optimizer_state_dict": step | {"param_groups": optimizer["param_groups"]}}


def _rank_of(path: Path) -> int:
    return int(re.search(r"zero_pp_rank_(\d+)_", path.name).group(1))  # pyright: ignore[reportOptionalMemberAccess] (the glob guarantees it)


def engine_files(name: str) -> bool:
    """Every file of the engine's state: a resharding rank reads all ranks' slices."""
    return name.startswith((f"{DS_TAG}/", f"{ACC_TAG}/")) and not name.endswith("/latest")
