"""Photometric guidance: SDS's place in the training loop taken by an image loss against a known target.

Without diffusion weights the quality of an avatar cannot be judged, but what a recipe's
representation and schedule can hold can: give the trainer a target avatar whose every image is
known, and fit it instead of the text prompt. `PhotometricGuidance` has SDS's calls (`prepare`
before the render, `loss` after it, or both as one call), so every stage of every recipe (the
NeRF stages, the Gaussian stages with densification) runs exactly as in training. Its loss is
the L1 distance of the trainer's renders to the target's renders through the same batch (pose,
cameras, backgrounds), per view the mean over the image's pixels times `weight`. The weight is
the loss's scale against the recipe's other terms (the NeRF's sigma-prior) and the
densification's gradient threshold, which were set against SDS: SDS sums a gradient of unit
scale over each view's 4 x 64 x 64 latents (whatever the render size: the image is resized to
512 px), so by default the L1 counts as much, 16,384 elements per view; the views are then
summed or averaged as the recipe's SDS reduces them (`sds.reduction`).

`attach(trainer)` puts it into the trainer's guidance slot and lets it see each iteration's
batch (the trainer's batch source, remembering what it handed out); the batches then skip the
skeleton images, which only SDS uses.
"""

from __future__ import annotations

import dataclasses

from typing import Any, Callable

import torch

from ..avatar import Avatar, pose_with_transforms
from ..render import rasterize_views
from .batches import Batch


class RecordingBatches:
    """A batch source that remembers the batch it handed out last."""

    def __init__(self, source: Any) -> None:
        self.source = source
        self.last: Batch | None = None

    def get(self, step: int) -> Batch:
        self.last = self.source.get(step)
        return self.last

    def close(self) -> None:
        self.source.close()


SDS_ELEMENTS = 4 * 64 * 64   # latents per view that SDS sums its gradient over


class PhotometricGuidance:
    """L1 against `target` rendered through the trainer's batch of the same iteration."""

    def __init__(self, target: Avatar, rasterizer: str = "auto", weight: float = SDS_ELEMENTS,
                 reduction: str = "mean") -> None:
        if reduction not in ("mean", "sum"):
            raise ValueError(f"reduction must be mean or sum; got {reduction!r}")
        self.target = target
        self.rasterizer = rasterizer
        self.weight = float(weight)
        self.reduction = reduction
        self.batches: RecordingBatches | None = None

    def attach(self, trainer: Any) -> "PhotometricGuidance":
        """Take SDS's place in `trainer` (its views reduced as the trainer's SDS would)."""
        self.reduction = trainer.config.sds.reduction
        trainer.batches.needs_controls = lambda stage: False
        self.batches = RecordingBatches(trainer.batches)
        trainer.batches = self.batches
        trainer.sds = self
        return self

    def prepare(self, control: torch.Tensor | None, prompts: list[tuple[str, str]], progress: float,
                generator: torch.Generator) -> "PhotometricInputs":
        if self.batches is None or self.batches.last is None:
            raise RuntimeError("PhotometricGuidance.prepare before any batch: attach it to the trainer first")
        last = self.batches.last
        return PhotometricInputs(last, len(last.views))

    @torch.no_grad()
    def render_target(self, batch: Batch, size: tuple[int, int]) -> torch.Tensor:
        """(V, 3, H, W) of the target through the batch's pose, cameras and backgrounds."""
        posed = pose_with_transforms(self.target, batch.transforms, batch.expression, batch.rotations)
        cameras = [v.camera for v in batch.views]
        if any((int(c.height), int(c.width)) != size for c in cameras):
            raise ValueError(f"the batch's cameras are not {size[1]}x{size[0]}, the size of the trainer's images")
        out = rasterize_views([posed] * len(cameras), cameras, backend=self.rasterizer,
                              backgrounds=batch.backgrounds, depth=False)
        return out.rgb.permute(0, 3, 1, 2)

    def loss(self, images: torch.Tensor, inputs: "PhotometricInputs",
             timer: Callable[[str], Any] | None = None) -> tuple[torch.Tensor, dict[str, Any]]:
        target = self.render_target(inputs.batch, (int(images.shape[-2]), int(images.shape[-1])))
        l1 = (images - target.to(images.dtype)).abs().mean(dim=(1, 2, 3))
        loss = self.weight * (l1.sum() if self.reduction == "sum" else l1.sum() / inputs.total)
        return loss, {"l1": l1.detach().mean()}

    def __call__(self, images: torch.Tensor, control: torch.Tensor | None, prompts: list[tuple[str, str]],
                 progress: float, generator: torch.Generator,
                 timer: Callable[[str], Any] | None = None) -> tuple[torch.Tensor, dict[str, Any]]:
        return self.loss(images, self.prepare(control, prompts, progress, generator), timer)


@dataclasses.dataclass
class PhotometricInputs:
    """A step's photometric "SDS inputs": the batch, cut to a rank's views like SDSInputs; the
    mean divides by the whole batch's views (`total`), as SDS's does."""

    batch: Batch
    total: int

    def views(self, share: slice) -> "PhotometricInputs":
        return PhotometricInputs(self.batch.share(share), self.total)
