"""Posing an avatar: skinning transforms in, world-space Gaussians out.

One path serves everything: Blender sends per-joint skinning transforms G_j (DESIGN.md §3), and
SMPL-X pose parameters are first turned into the same transforms by forward kinematics.
"""

from __future__ import annotations

from typing import Any

import torch

from ..render import GaussianSet
from .gaussians import Avatar


class PoseError(ValueError):
    """Pose input that cannot be used (wrong shape, NaN or infinite values)."""


def matrix_to_quaternion(m: torch.Tensor) -> torch.Tensor:
    """(..., 3, 3) rotation matrices -> (..., 4) wxyz quaternions (branch-free, stable)."""
    m00, m11, m22 = m[..., 0, 0], m[..., 1, 1], m[..., 2, 2]
    candidates = torch.stack([
        torch.stack([1 + m00 + m11 + m22, m[..., 2, 1] - m[..., 1, 2], m[..., 0, 2] - m[..., 2, 0], m[..., 1, 0] - m[..., 0, 1]], -1),
        torch.stack([m[..., 2, 1] - m[..., 1, 2], 1 + m00 - m11 - m22, m[..., 0, 1] + m[..., 1, 0], m[..., 0, 2] + m[..., 2, 0]], -1),
        torch.stack([m[..., 0, 2] - m[..., 2, 0], m[..., 0, 1] + m[..., 1, 0], 1 - m00 + m11 - m22, m[..., 1, 2] + m[..., 2, 1]], -1),
        torch.stack([m[..., 1, 0] - m[..., 0, 1], m[..., 0, 2] + m[..., 2, 0], m[..., 1, 2] + m[..., 2, 1], 1 - m00 - m11 + m22], -1),
    ], dim=-2)
    best = torch.stack([m00 + m11 + m22, m00, m11, m22], -1).argmax(-1)
    q = torch.gather(candidates, -2, best[..., None, None].expand(*best.shape, 1, 4))[..., 0, :]
    return q / torch.linalg.norm(q, dim=-1, keepdim=True).clamp_min(1e-12)


def quaternion_multiply(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    aw, ax, ay, az = a.unbind(-1)
    bw, bx, by, bz = b.unbind(-1)
    return torch.stack([
        aw * bw - ax * bx - ay * by - az * bz,
        aw * bx + ax * bw + ay * bz - az * by,
        aw * by - ax * bz + ay * bw + az * bx,
        aw * bz + ax * by - ay * bx + az * bw,
    ], -1)


def _check_transforms(transforms: Any, device: torch.device) -> torch.Tensor:
    t = torch.as_tensor(transforms, dtype=torch.float32, device=device)
    if t.shape != (55, 4, 4):
        raise PoseError(f"skinning transforms must have shape (55, 4, 4); got {tuple(t.shape)}")
    if not torch.isfinite(t).all():
        raise PoseError("skinning transforms contain NaN or infinite values")
    return t


def _split_scale(rot: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Uniform scale (an armature object may be scaled) and the pure rotation."""
    scale = torch.linalg.det(rot).abs().clamp_min(1e-12) ** (1.0 / 3.0)
    return scale, rot / scale[..., None, None]


def triangle_frames(vertices: torch.Tensor, faces: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-triangle corners (M, 3, 3) and orthonormal frames (M, 3, 3) with columns edge,
    bitangent, normal."""
    tri = vertices[faces]
    e = tri[:, 1] - tri[:, 0]
    n = torch.linalg.cross(e, tri[:, 2] - tri[:, 0])
    e = e / torch.linalg.norm(e, dim=-1, keepdim=True).clamp_min(1e-12)
    n = n / torch.linalg.norm(n, dim=-1, keepdim=True).clamp_min(1e-12)
    b = torch.linalg.cross(n, e)
    return tri, torch.stack([e, b, n], dim=-1)


def pose_free(avatar: Avatar, transforms: torch.Tensor) -> GaussianSet:
    free = avatar.free
    scale, rot = _split_scale(transforms[:, :3, :3])
    joint_quats = matrix_to_quaternion(rot)
    w = free.skin_weights
    idx = free.skin_joints
    blended = torch.einsum("nk,nkrc->nrc", w, transforms[idx])
    means = (blended[:, :3, :3] @ free.means[:, :, None])[..., 0] + blended[:, :3, 3]
    q = joint_quats[idx]
    sign = torch.where((q * q[:, :1]).sum(-1, keepdim=True) < 0, -1.0, 1.0)
    q = (w[..., None] * sign * q).sum(1)
    q = q / torch.linalg.norm(q, dim=-1, keepdim=True).clamp_min(1e-12)
    s = (w * scale[idx]).sum(1, keepdim=True)
    return GaussianSet(
        means=means,
        quats=quaternion_multiply(q, free.quats),
        scales=torch.exp(free.log_scales) * s,
        opacities=torch.sigmoid(free.opacity_logits),
        colors=free.colors.clamp(0, 1),
    )


def _areas(tri: torch.Tensor) -> torch.Tensor:
    return 0.5 * torch.linalg.norm(torch.linalg.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), dim=-1)


def pose_bound(avatar: Avatar, vertices: torch.Tensor) -> GaussianSet:
    """Gaussians on posed triangles; offsets and sizes grow with the triangle (scaled rigs, stretch)."""
    bound = avatar.bound
    faces = torch.as_tensor(avatar.body.faces, device=vertices.device)[bound.faces]
    tri, frames = triangle_frames(vertices, faces)
    rest_tri = avatar.body.shaped_vertices(avatar.betas)[faces]
    k = (_areas(tri) / _areas(rest_tri).clamp_min(1e-12)).sqrt()[:, None]
    anchor = (bound.barycentric[:, :, None] * tri).sum(1)
    means = anchor + k * (frames @ bound.offsets[:, :, None])[..., 0]
    return GaussianSet(
        means=means,
        quats=quaternion_multiply(matrix_to_quaternion(frames), bound.quats),
        scales=torch.exp(bound.log_scales) * k,
        opacities=torch.sigmoid(bound.opacity_logits),
        colors=bound.colors.clamp(0, 1),
    )


def pose_with_transforms(avatar: Avatar, transforms: Any, expression: Any = None,
                         local_rotations: Any = None) -> GaussianSet:
    """World-space Gaussians for skinning transforms G_j (55, 4, 4); expression values and the
    joints' local rotations (55, 3, 3, for pose correctives) are optional."""
    t = _check_transforms(transforms, avatar.device)
    parts = []
    if len(avatar.free):
        parts.append(pose_free(avatar, t))
    if len(avatar.bound):
        rots = None
        if local_rotations is not None:
            rots = torch.as_tensor(local_rotations, dtype=torch.float32, device=avatar.device)[None]
        if expression is not None:
            expression = torch.as_tensor(expression, dtype=torch.float32, device=avatar.device).reshape(1, -1)
            if not torch.isfinite(expression).all():
                raise PoseError("expression values contain NaN or infinite values")
        verts = avatar.body.pose_vertices(t[None], avatar.betas, expression, rots)[0]
        parts.append(pose_bound(avatar, verts))
    return GaussianSet.concat(parts)


def pose_with_params(avatar: Avatar, **params: Any) -> GaussianSet:
    """World-space Gaussians for one frame of SMPL-X pose parameters (global_orient, body_pose,
    hands as full axis-angles, jaw_pose, leye_pose, reye_pose, expression, transl)."""
    body = avatar.body
    expression = params.pop("expression", None)
    transl = params.pop("transl", None)
    full = body.full_pose(1, **params)
    rotations = body.local_rotations(full)
    t = None
    if transl is not None:
        t = torch.as_tensor(transl, dtype=torch.float32, device=avatar.device).reshape(1, 3)
        if not torch.isfinite(t).all():
            raise PoseError("transl contains NaN or infinite values")
    rest = body.rest_joints(avatar.betas)
    _, transforms = body.forward_kinematics(rotations, rest, t)
    return pose_with_transforms(avatar, transforms[0], expression, rotations[0])
