"""Training checkpoints: one file, written atomically, read with `torch.load(weights_only=True)`.

A checkpoint holds everything the next step depends on: the step, the stage plan (names and
planned lengths), the phase (NeRF or Gaussians) and the NeRF's state before the conversion, the
Gaussian tensors and skinning data, the appearance field, Adam's moments, the densification
accumulators, the random generators' states (numpy for cameras and poses, torch for noise,
timesteps and splits), the training time spent and the loss history, with the config it was
made with. Resuming from it continues exactly where the run stopped.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from ..files import write_torch_atomic

FORMAT = "dreamwaltz-train-checkpoint"
VERSION = 2   # 2: the schedule as named stages, the NeRF phase (version 1 checkpoints still load)
CHECKPOINT_DIR = "checkpoints"
CHECKPOINT_FILE = "last.pt"


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message names the file and the problem."""


def checkpoint_path(out_dir: str | os.PathLike) -> Path:
    return Path(out_dir) / CHECKPOINT_DIR / CHECKPOINT_FILE


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> Path:
    path = Path(path)
    payload = dict(state, format=FORMAT, version=VERSION)
    write_torch_atomic(path, payload)
    return path


def load_checkpoint(path: str | os.PathLike, device: torch.device | str = "cpu") -> dict[str, Any]:
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"there is no checkpoint at {path}")
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - a truncated or foreign file
        raise CheckpointError(f"{path} is not a readable training checkpoint ({type(exc).__name__}: {exc})") from exc
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a DreamWaltz training checkpoint")
    if int(state.get("version", 0)) > VERSION:
        raise CheckpointError(f"{path} was written by a newer version (checkpoint version {state['version']})")
    return state
