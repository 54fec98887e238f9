"""The stage schedule and the template initialisation.

`Schedule` maps an iteration to its stage. The template stage's length is fixed when a run
starts; the split of the remaining iterations into canonical and random-pose SDS follows the
planned total, which a time budget may shorten once the speed is known.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import torch

from ..avatar import Avatar, BoundGaussians, FreeGaussians, init_template_avatar
from ..avatar.gaussians import SKIN_INFLUENCES
from ..avatar.posing import matrix_to_quaternion, quaternion_multiply, triangle_frames

STAGES = ("template", "canonical", "posed")


@dataclasses.dataclass
class Schedule:
    template_end: int
    planned_total: int
    canonical_fraction: float

    @classmethod
    def create(cls, total: int, template_fraction: float, canonical_fraction: float) -> "Schedule":
        template = int(round(total * template_fraction))
        if template_fraction > 0:
            template = max(1, template)
        return cls(min(template, total), total, canonical_fraction)

    @property
    def canonical_end(self) -> int:
        sds = max(0, self.planned_total - self.template_end)
        return self.template_end + int(round(sds * self.canonical_fraction))

    def stage_at(self, step: int) -> str:
        if step < self.template_end:
            return "template"
        if step < self.canonical_end:
            return "canonical"
        return "posed"

    def sds_progress(self, step: int) -> float:
        """Progress through the SDS iterations, in [0, 1] (drives the timestep annealing)."""
        sds = self.planned_total - self.template_end
        if sds <= 1:
            return 0.0
        return min(1.0, max(0.0, (step - self.template_end) / (sds - 1)))

    def shorten(self, new_total: int, current_step: int) -> None:
        """Plan fewer iterations (time budget); the canonical stage keeps its share of the
        rest but never ends before the current step."""
        new_total = max(current_step, min(self.planned_total, int(new_total)))
        self.planned_total = new_total
        if self.canonical_end < current_step and self.planned_total > self.template_end:
            done = (current_step - self.template_end) / (self.planned_total - self.template_end)
            self.canonical_fraction = min(1.0, max(self.canonical_fraction, done))

    def state_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def unbind_face(avatar: Avatar) -> Avatar:
    """Turn the mesh-bound Gaussians on face triangles into free Gaussians skinned to the face's
    joints (without expression control the face is free like the rest of the head)."""
    body = avatar.body
    if not len(avatar.bound):
        return avatar
    faces_np = np.asarray(body.faces)
    face_tri = torch.as_tensor(body.regions()["face"][faces_np].all(1), device=avatar.bound.faces.device)
    on_face = face_tri[avatar.bound.faces]
    if not bool(on_face.any()):
        return avatar
    b = avatar.bound
    sel = on_face.nonzero().squeeze(1)
    keep = (~on_face).nonzero().squeeze(1)
    faces = torch.as_tensor(faces_np, device=b.faces.device)[b.faces[sel]]
    rest = body.shaped_vertices(avatar.betas).detach()
    tri, frames = triangle_frames(rest, faces)
    bary = b.barycentric[sel]
    anchor = (bary[:, :, None] * tri).sum(1)
    means = anchor + (frames @ b.offsets[sel][:, :, None])[..., 0]
    quats = quaternion_multiply(matrix_to_quaternion(frames), b.quats[sel])
    weights = (bary[:, :, None] * body.skinning_weights.detach()[faces]).sum(1)
    w, idx = torch.topk(weights, SKIN_INFLUENCES, dim=1)
    w = w / w.sum(1, keepdim=True).clamp_min(1e-12)
    f = avatar.free
    free = FreeGaussians(
        means=torch.cat([f.means, means]), quats=torch.cat([f.quats, quats]),
        log_scales=torch.cat([f.log_scales, b.log_scales[sel]]),
        opacity_logits=torch.cat([f.opacity_logits, b.opacity_logits[sel]]),
        colors=torch.cat([f.colors, b.colors[sel]]), skin_joints=torch.cat([f.skin_joints, idx.long()]),
        skin_weights=torch.cat([f.skin_weights, w]))
    bound = BoundGaussians(**{fl.name: getattr(b, fl.name)[keep] for fl in dataclasses.fields(BoundGaussians)})
    return Avatar(body=body, betas=avatar.betas, free=free, bound=bound, meta=avatar.meta)


def template_avatar(body: Any, num_gaussians: int, seed: int, betas: Any, bound_fraction: float,
                    expression: bool) -> Avatar:
    """The starting point: Gaussians on the shaped template's surface, mesh-bound on the hands
    (and on the face with expression control), free elsewhere."""
    avatar = init_template_avatar(body, num_gaussians, seed=seed, betas=betas, bound_fraction=bound_fraction)
    if not expression:
        avatar = unbind_face(avatar)
    return avatar
