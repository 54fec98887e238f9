"""Mesh-bound Gaussians as DreamWaltz-G makes them: six per triangle of the hands (and, with
expression control, the face), flat, fully opaque, sized by their triangle.

Per triangle the six start at the original's barycentric coordinates; each is flat (no extent
along the normal), its two tangent scales are the mean distance of the triangle's corners from
it along the triangle's edge and bitangent (the original's, there along its own tangent frame)
times a learnable factor clamped to [0.5, 2], its opacity is 1 and it has no offset off the
surface. They are `BoundGaussians` like any other (posing scales them with their triangle), so
an avatar file holds them unchanged; `PaperBound` is the learnable form training optimises.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
import torch

from ..body.segmentation import part_triangles
from .gaussians import BoundGaussians

PER_TRIANGLE = 6
BARYCENTRICS = torch.tensor([[2 / 3, 1 / 6, 1 / 6], [1 / 6, 2 / 3, 1 / 6], [1 / 6, 1 / 6, 2 / 3],
                             [1 / 6, 5 / 12, 5 / 12], [5 / 12, 1 / 6, 5 / 12], [5 / 12, 5 / 12, 1 / 6]])
SCALE_RANGE = (0.5, 2.0)
FLAT = 1e-5                # metres along the normal: flat, for a rasterizer that needs a positive scale
OPAQUE = 20.0              # opacity logit whose sigmoid is exactly 1 in float32


def tangent_scales(vertices: torch.Tensor, faces: torch.Tensor, barycentric: torch.Tensor) -> torch.Tensor:
    """(M, 2): mean |corner - point| along the triangle's edge and bitangent, per Gaussian."""
    from .posing import triangle_frames

    tri, frames = triangle_frames(vertices, faces)
    point = (barycentric[:, :, None] * tri).sum(1)
    rel = tri - point[:, None, :]                                   # (M, 3 corners, 3)
    along = torch.einsum("mkc,mca->mka", rel, frames[:, :, :2])     # (M, 3 corners, 2 axes)
    return along.abs().sum(1) / PER_TRIANGLE


@dataclasses.dataclass
class PaperBound:
    """The learnable form: faces (M,), barycentric weights (M, 3, normalised by their sum when
    used), scale factors (M, 2, clamped to SCALE_RANGE when used), the tangent scales of the rest
    triangles (M, 2) and colours (M, 3, used where the avatar has no field)."""

    faces: torch.Tensor
    barycentric: torch.Tensor
    factors: torch.Tensor
    base_scales: torch.Tensor
    colors: torch.Tensor

    def gaussians(self) -> BoundGaussians:
        """The `BoundGaussians` they are now (differentiable in barycentrics and factors)."""
        m = len(self.faces)
        device = self.barycentric.device
        bary = self.barycentric / self.barycentric.sum(1, keepdim=True)
        tangent = self.base_scales * self.factors.clamp(*SCALE_RANGE)
        log_scales = torch.cat([tangent.log(), torch.full((m, 1), math.log(FLAT), device=device)], 1)
        return BoundGaussians(faces=self.faces, barycentric=bary, offsets=torch.zeros(m, 3, device=device),
                              quats=torch.tensor([[1.0, 0.0, 0.0, 0.0]], device=device).expand(m, 4),
                              log_scales=log_scales, opacity_logits=torch.full((m,), OPAQUE, device=device),
                              colors=self.colors)


def paper_bound(body: Any, betas: torch.Tensor, parts: tuple[str, ...] = ("hands",),
                color: tuple[float, float, float] = (0.8, 0.66, 0.5)) -> PaperBound:
    """Six Gaussians on every triangle of `parts` of the body shaped by `betas`."""
    tri = torch.as_tensor(part_triangles(body, parts), dtype=torch.long, device=body.device)
    faces = tri.repeat_interleave(PER_TRIANGLE)
    bary = BARYCENTRICS.to(body.device).repeat(len(tri), 1)
    vertices = body.shaped_vertices(betas).detach()
    corners = torch.as_tensor(np.asarray(body.faces), device=body.device)[faces]
    base = tangent_scales(vertices, corners, bary)
    m = len(faces)
    return PaperBound(faces=faces, barycentric=bary, factors=torch.ones(m, 2, device=body.device),
                      base_scales=base.clamp_min(FLAT), colors=torch.tensor([color], device=body.device).expand(m, 3).clone())


__all__ = ["PaperBound", "paper_bound", "tangent_scales", "PER_TRIANGLE", "BARYCENTRICS", "SCALE_RANGE", "FLAT",
           "OPAQUE"]
