"""The stage schedule and the template initialisation.

`Schedule` maps an iteration to its stage: the recipe's stages (recipes.Stage) in order, each
with a planned length. The lengths are fixed when a run starts; a time budget may shorten the
stages still to come (and the rest of the current one) once the speed is known. The schedule
is saved in every checkpoint, so a resumed run continues with the same plan.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
import torch

from ..avatar import Avatar, BoundGaussians, FreeGaussians, init_template_avatar
from ..avatar.gaussians import SKIN_INFLUENCES
from ..avatar.posing import matrix_to_quaternion, quaternion_multiply, triangle_frames
from .recipes import Stage


@dataclasses.dataclass
class Schedule:
    names: list[str]
    lengths: list[int]          # planned iterations per stage (a time budget may shorten them)

    @classmethod
    def create(cls, stages: list[Stage]) -> "Schedule":
        return cls([s.name for s in stages], [int(s.steps) for s in stages])

    @property
    def planned_total(self) -> int:
        return sum(self.lengths)

    @property
    def ends(self) -> list[int]:
        out, end = [], 0
        for n in self.lengths:
            end += n
            out.append(end)
        return out

    def index_at(self, step: int) -> int:
        """The stage of iteration `step` (the last stage for steps past the end)."""
        for i, end in enumerate(self.ends):
            if step < end:
                return i
        return len(self.names) - 1

    def stage_at(self, step: int) -> str:
        return self.names[self.index_at(step)]

    def start_of(self, index: int) -> int:
        return self.ends[index] - self.lengths[index]

    def end_of(self, name: str) -> int:
        return self.ends[self.names.index(name)]

    def stage_progress(self, step: int) -> float:
        """Progress through the current stage, in [0, 1]."""
        i = self.index_at(step)
        return min(1.0, max(0.0, (step - self.start_of(i)) / max(1, self.lengths[i])))

    def sds_progress(self, step: int, skip: tuple[str, ...] = ("template",)) -> float:
        """Progress through the iterations of all stages but `skip`, in [0, 1] (drives the
        timestep annealing of the fast recipe)."""
        first = sum(n for name, n in zip(self.names, self.lengths) if name in skip)
        sds = self.planned_total - first
        if sds <= 1:
            return 0.0
        return min(1.0, max(0.0, (step - first) / (sds - 1)))

    def shorten(self, new_total: int, current_step: int) -> None:
        """Plan `new_total` iterations in all (never more than planned): the stages after
        `current_step` and the rest of the current one shrink by the same factor, in
        proportion to their planned lengths; the stages done keep theirs."""
        new_total = max(current_step, min(self.planned_total, int(new_total)))
        i = self.index_at(current_step)
        rest = [max(0, self.ends[i] - current_step)] + self.lengths[i + 1:]
        have, want = sum(rest), new_total - current_step
        if have <= 0 or want >= have:
            return
        exact = [n * want / have for n in rest]
        got = [int(math.floor(x)) for x in exact]
        for k in sorted(range(len(got)), key=lambda k: got[k] - exact[k])[:want - sum(got)]:
            got[k] += 1
        self.lengths[i] = current_step - self.start_of(i) + got[0]
        self.lengths[i + 1:] = got[1:]

    def state_dict(self) -> dict[str, Any]:
        return {"names": list(self.names), "lengths": list(self.lengths)}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> "Schedule":
        return cls([str(n) for n in state["names"]], [int(n) for n in state["lengths"]])


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
