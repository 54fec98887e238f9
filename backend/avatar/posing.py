"""Posing an avatar: skinning transforms in, world-space Gaussians out.

One path serves everything: Blender sends per-joint skinning transforms G_j (DESIGN.md §3), and
SMPL-X pose parameters are first turned into the same transforms by forward kinematics.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import numpy as np
import torch

from ..body.kinematics import rodrigues, skinning_transforms
from ..render import GaussianSet
from .gaussians import Avatar

log = logging.getLogger(__name__)


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


def _checked(value: Any, shape: tuple[int, ...] | None, name: str, device: torch.device) -> torch.Tensor:
    """As a float32 tensor on `device`. Values from the host (numpy, CPU tensors: what users
    and Blender send) are checked for shape and NaN/inf; CUDA tensors come from our own code
    and are not checked, which would cost a GPU sync per frame."""
    if torch.is_tensor(value) and value.is_cuda:
        t = value.to(device=device, dtype=torch.float32)
        if shape is not None and tuple(t.shape) != shape:
            raise PoseError(f"{name} must have shape {shape}; got {tuple(t.shape)}")
        return t
    host = np.asarray(value.detach().cpu() if torch.is_tensor(value) else value, dtype=np.float32)
    if shape is not None and host.shape != shape:
        raise PoseError(f"{name} must have shape {shape}; got {host.shape}")
    if not np.isfinite(host).all():
        raise PoseError(f"{name} contain NaN or infinite values" if name.endswith("s") else
                        f"{name} contains NaN or infinite values")
    return torch.from_numpy(host).to(device, non_blocking=True)


def _split_scale(rot: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Uniform scale (an armature object may be scaled) and the pure rotation."""
    scale = torch.linalg.det(rot).abs().clamp_min(1e-12) ** (1.0 / 3.0)
    return scale, rot / scale[..., None, None]


def triangle_frames(vertices: torch.Tensor, faces: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-triangle corners (M, 3, 3) and orthonormal frames (M, 3, 3) with columns edge,
    bitangent, normal. `faces` (M, 3) are vertex indices."""
    tri = vertices[faces]
    e = tri[:, 1] - tri[:, 0]
    n = torch.linalg.cross(e, tri[:, 2] - tri[:, 0])
    e = e / torch.linalg.norm(e, dim=-1, keepdim=True).clamp_min(1e-12)
    n = n / torch.linalg.norm(n, dim=-1, keepdim=True).clamp_min(1e-12)
    b = torch.linalg.cross(n, e)
    return tri, torch.stack([e, b, n], dim=-1)


def pose_free(avatar: Avatar, transforms: torch.Tensor, rest_means: torch.Tensor | None = None) -> GaussianSet:
    """Linear blend skinning of the free Gaussians (`rest_means`: their rest positions for
    another body shape; default: the shape they were made on)."""
    free = avatar.free
    scale, rot = _split_scale(transforms[:, :3, :3])
    joint_quats = matrix_to_quaternion(rot)
    w = free.skin_weights
    idx = free.skin_joints
    blended = torch.einsum("nk,nkrc->nrc", w, transforms[idx])
    rest = free.means if rest_means is None else rest_means
    means = (blended[:, :3, :3] @ rest[:, :, None])[..., 0] + blended[:, :3, 3]
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


MAX_BETA = 5.0
"""Shape coefficients are in standard deviations; beyond this the body model means nothing."""
SHAPE_ANCHORS = 4


def check_betas(avatar: Avatar, betas: Any) -> np.ndarray:
    """A full host-side betas vector for the avatar's body model, or a clear PoseError."""
    n = avatar.body.num_betas
    b = np.asarray(betas.detach().cpu() if torch.is_tensor(betas) else betas, dtype=np.float64).reshape(-1)
    if b.size > n:
        raise PoseError(f"{b.size} betas given; the body model {avatar.body.path.name} has {n}")
    if not np.isfinite(b).all():
        raise PoseError("betas contain NaN or infinite values")
    if np.abs(b).max(initial=0.0) > MAX_BETA:
        raise PoseError(f"betas must lie within ±{MAX_BETA:g} (standard deviations); got {np.abs(b).max():.3g}")
    return np.pad(b, (0, n - b.size))


def _state_for(avatar: Avatar, betas: torch.Tensor) -> dict:
    vertices = avatar.body.shaped_vertices(betas).detach()
    return {"vertices": vertices, "joints": avatar.body.rest_joints(betas).detach().cpu().double().numpy()}


def rest_state(avatar: Avatar) -> dict:
    """What posing needs that depends only on the trained shape: rest joints (host, float64),
    rest vertices, the vertex indices and rest areas of the triangles that carry Gaussians. Kept
    in `avatar.cache`; recomputed when `avatar.betas` is replaced."""
    cache = avatar.cache
    if cache.get("betas") is not avatar.betas:
        state = _state_for(avatar, avatar.betas)
        faces = torch.as_tensor(avatar.body.faces, device=state["vertices"].device)[avatar.bound.faces]
        cache.clear()
        cache.update(state, betas=avatar.betas, faces=faces, areas=_areas(state["vertices"][faces]), shapes={})
    return cache


def shape_anchors(avatar: Avatar) -> tuple[torch.Tensor, torch.Tensor]:
    """For each free Gaussian, its nearest body vertices (among those its main joint moves) and
    inverse-distance weights: clothes and hair follow the surface they sit on when the shape
    changes."""
    cache = rest_state(avatar)
    if "anchors" not in cache:
        verts = cache["vertices"]
        means = avatar.free.means.detach()
        weights = avatar.body.skinning_weights
        main = avatar.free.skin_joints[:, 0]
        idx = torch.zeros(len(means), SHAPE_ANCHORS, dtype=torch.long, device=means.device)
        dist = torch.ones(len(means), SHAPE_ANCHORS, device=means.device)
        for j in torch.unique(main).tolist():
            rows = torch.nonzero(main == j)[:, 0]
            cand = torch.nonzero(weights[:, j] > 0.05)[:, 0]
            if len(cand) < SHAPE_ANCHORS:
                cand = torch.arange(len(verts), device=verts.device)
            for chunk in rows.split(8192):
                d = torch.cdist(means[chunk], verts[cand])
                best, arg = d.topk(SHAPE_ANCHORS, dim=1, largest=False)
                idx[chunk], dist[chunk] = cand[arg], best
        w = 1.0 / dist.clamp_min(1e-4)
        cache["anchors"] = (idx, w / w.sum(1, keepdim=True))
    return cache["anchors"]


def shape_state(avatar: Avatar, betas: Any = None) -> dict:
    """Rest state for a body shape: the trained one (betas None) or another (shape editing), with
    the free Gaussians' rest positions moved by the displacement of their anchor vertices."""
    rest = rest_state(avatar)
    if betas is None:
        return rest
    b = check_betas(avatar, betas)
    key = b.astype(np.float32).tobytes()
    shapes = rest["shapes"]
    if key not in shapes:
        target = torch.as_tensor(b, dtype=torch.float32, device=avatar.device)
        state = _state_for(avatar, target)
        if len(avatar.free):
            idx, w = shape_anchors(avatar)
            shift = state["vertices"] - rest["vertices"]
            state["free_means"] = avatar.free.means + (w[..., None] * shift[idx]).sum(1)
        if len(shapes) > 8:
            shapes.clear()
        shapes[key] = state
    return shapes[key]


def pose_bound(avatar: Avatar, vertices: torch.Tensor) -> GaussianSet:
    """Gaussians on posed triangles; offsets and sizes grow with the triangle (scaled rigs, stretch)."""
    bound = avatar.bound
    rest = rest_state(avatar)
    tri, frames = triangle_frames(vertices, rest["faces"])
    k = (_areas(tri) / rest["areas"].clamp_min(1e-12)).sqrt()[:, None]
    anchor = (bound.barycentric[:, :, None] * tri).sum(1)
    means = anchor + k * (frames @ bound.offsets[:, :, None])[..., 0]
    return GaussianSet(
        means=means,
        quats=quaternion_multiply(matrix_to_quaternion(frames), bound.quats),
        scales=torch.exp(bound.log_scales) * k,
        opacities=torch.sigmoid(bound.opacity_logits),
        colors=bound.colors.clamp(0, 1),
    )


def _pose_device(avatar: Avatar, t: torch.Tensor, expression: torch.Tensor | None,
                 rots: torch.Tensor | None, state: dict) -> GaussianSet:
    """Posing proper: device tensors in, Gaussians out, no host synchronisation."""
    parts = []
    if len(avatar.free):
        parts.append(pose_free(avatar, t, state.get("free_means")))
    if len(avatar.bound):
        verts = avatar.body.pose_vertices(t[None], None, expression, rots, shaped=state["vertices"])[0]
        parts.append(pose_bound(avatar, verts))
    return GaussianSet.concat(parts)


class PoseGraph:
    """One avatar's posing captured as a CUDA graph and replayed per frame.

    Posing is a hundred small kernels; launched one by one from Python they cost several
    milliseconds, replayed as one graph a fraction of that. Used for inference on CUDA only
    (no autograd); the result is copied out, so it stays valid after the next frame."""

    def __init__(self, avatar: Avatar, state: dict, t: torch.Tensor, expression: torch.Tensor | None,
                 rots: torch.Tensor | None) -> None:
        self.state = state
        self.inputs = (t.clone(), None if expression is None else expression.clone(),
                       None if rots is None else rots.clone())
        side = torch.cuda.Stream(device=t.device)
        side.wait_stream(torch.cuda.current_stream(t.device))
        with torch.cuda.stream(side):
            for _ in range(2):
                _pose_device(avatar, *self.inputs, state)
        torch.cuda.current_stream(t.device).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        # thread-local: other threads of the process (a training run's batch receiver pinning
        # memory, the server's jobs) may call CUDA meanwhile without invalidating the capture
        with torch.cuda.graph(self.graph, capture_error_mode="thread_local"):
            self.output = _pose_device(avatar, *self.inputs, state)

    def __call__(self, t: torch.Tensor, expression: torch.Tensor | None, rots: torch.Tensor | None) -> GaussianSet:
        for static, value in zip(self.inputs, (t, expression, rots)):
            if static is not None:
                static.copy_(value)
        self.graph.replay()
        return GaussianSet(**{name: value.clone() for name, value in self.output._tensors().items()})


def _graphable(avatar: Avatar) -> bool:
    return (avatar.device.type == "cuda" and not torch.is_grad_enabled()
            and not os.environ.get("DREAMWALTZ_NO_CUDA_GRAPHS") and not avatar.cache.get("no_graphs")
            and not any(p.requires_grad for p in (avatar.free.means, avatar.bound.offsets)))


def pose_with_transforms(avatar: Avatar, transforms: Any, expression: Any = None,
                         local_rotations: Any = None, betas: Any = None) -> GaussianSet:
    """World-space Gaussians for skinning transforms G_j (55, 4, 4); expression values, the
    joints' local rotations (55, 3, 3, for pose correctives) and a body shape other than the
    trained one (`betas`; the transforms must then come from that shape's skeleton) are optional."""
    device = avatar.device
    t = _checked(transforms, (55, 4, 4), "skinning transforms", device)
    state = shape_state(avatar, betas)
    rots = None if local_rotations is None or not len(avatar.bound) else \
        _checked(local_rotations, (55, 3, 3), "local rotations", device)[None]
    if expression is not None and len(avatar.bound):
        expression = _checked(expression, None, "expression values", device).reshape(1, -1)
    else:
        expression = None
    if not _graphable(avatar):
        return _pose_device(avatar, t, expression, rots, state)
    key = ("graph", id(state), None if expression is None else tuple(expression.shape), rots is None)
    graphs = avatar.cache.setdefault("graphs", {})
    if key not in graphs or graphs[key].state is not state:
        if len(graphs) > 8:
            graphs.clear()
        try:
            graphs[key] = PoseGraph(avatar, state, t, expression, rots)
        except Exception as exc:  # noqa: BLE001 - an uncapturable op or driver: posing works without graphs
            torch.cuda.synchronize(device)
            log.warning("CUDA graph capture of the posing failed (%s); posing without graphs", exc)
            avatar.cache["no_graphs"] = True
            return _pose_device(avatar, t, expression, rots, state)
    return graphs[key](t, expression, rots)


POSE_PARTS = (("global_orient", 1), ("body_pose", 21), ("jaw_pose", 1), ("leye_pose", 1),
              ("reye_pose", 1), ("left_hand_pose", 15), ("right_hand_pose", 15))


def full_pose_host(params: dict[str, Any]) -> np.ndarray:
    """(55, 3) axis-angles on the host from SMPL-X's named parameters (missing = zero)."""
    chunks = []
    for name, joints in POSE_PARTS:
        value = params.get(name)
        if value is None:
            chunks.append(np.zeros((joints, 3)))
            continue
        host = np.asarray(value.detach().cpu() if torch.is_tensor(value) else value, dtype=np.float64)
        if host.size != joints * 3:
            raise PoseError(f"{name} must hold {joints * 3} values; got {host.size}")
        if not np.isfinite(host).all():
            raise PoseError(f"{name} contains NaN or infinite values")
        chunks.append(host.reshape(joints, 3))
    return np.concatenate(chunks)


def pose_with_params(avatar: Avatar, betas: Any = None, **params: Any) -> GaussianSet:
    """World-space Gaussians for one frame of SMPL-X pose parameters (global_orient, body_pose,
    hands as full axis-angles, jaw_pose, leye_pose, reye_pose, expression, transl), optionally
    with another body shape (`betas`)."""
    expression = params.pop("expression", None)
    transl = params.pop("transl", None)
    unknown = set(params) - {name for name, _ in POSE_PARTS}
    if unknown:
        raise PoseError(f"unknown pose parameters: {', '.join(sorted(unknown))}")
    rotations = rodrigues(full_pose_host(params))
    t = None
    if transl is not None:
        t = np.asarray(transl.detach().cpu() if torch.is_tensor(transl) else transl, dtype=np.float64).reshape(3)
        if not np.isfinite(t).all():
            raise PoseError("transl contains NaN or infinite values")
    _, transforms = skinning_transforms(rotations, shape_state(avatar, betas)["joints"], t)
    return pose_with_transforms(avatar, transforms, expression, rotations, betas)
