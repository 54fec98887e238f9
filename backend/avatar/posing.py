"""Posing an avatar: skinning transforms in, world-space Gaussians out.

One function serves every renderer (the CLI, the server behind Blender's F12 and viewport, the
demo, export): `pose_with_transforms`. Blender sends per-joint skinning transforms G_j
(DESIGN.md §3); SMPL-X pose parameters are first turned into the same transforms by forward
kinematics (`pose_with_params`). Everything per joint (rotations, quaternions, scales, the body
pose the deformation network reads) is derived from the transforms once per frame
(`joint_frame`), then everything per Gaussian, all on the avatar's device and, on CUDA, replayed
as one CUDA graph. A hybrid avatar's free Gaussians take colour and opacity from its field
and move with its deformation network before skinning (hybrid.py).
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any

import numpy as np
import torch

from ..body.joints import PARENTS
from ..body.kinematics import rodrigues, skinning_transforms
from ..render import GaussianSet
from .gaussians import Avatar
from .hybrid import MIN_SCALE, FreeNetworkState, free_network_state
from .quaternions import (apply_multiplier, matrix_to_quaternion, on_device, quaternion_multiply,
                          quaternion_to_axis_angle, right_multiplier)

log = logging.getLogger(__name__)

__all__ = ["PoseError", "pose_with_transforms", "pose_with_params", "joint_frame", "matrix_to_quaternion",
           "quaternion_multiply", "triangle_frames"]

# columns of the per-joint table `joint_frame` makes
T_ROWS, QUAT, SCALE, LOCAL_AA = slice(0, 12), slice(16, 20), 20, slice(21, 24)


HALF = torch.float16
FP32_ENV = "DREAMWALTZ_FP32_DEFORMATION"
"""On CUDA the deformation network runs in half precision when posing for display (its offsets
are centimetres: the rounding is far below a pixel; tests/test_hybrid.py bounds it); this
environment variable keeps it in float32."""


class PoseError(ValueError):
    """Pose input that cannot be used (wrong shape, NaN or infinite values)."""


def _host(value: Any, shape: tuple[int, ...] | None, name: str) -> np.ndarray:
    """A host float64 array, checked for shape and NaN/inf (what users and Blender send)."""
    host = np.asarray(value.detach().cpu() if torch.is_tensor(value) else value, dtype=np.float64)
    if shape is not None and host.shape != shape:
        raise PoseError(f"{name} must have shape {shape}; got {host.shape}")
    if not np.isfinite(host).all():
        raise PoseError(f"{name} contain NaN or infinite values" if name.endswith("s") else
                        f"{name} contains NaN or infinite values")
    return host


def _checked(value: Any, shape: tuple[int, ...] | None, name: str, device: torch.device) -> torch.Tensor:
    """As a float32 tensor on `device`. Host values are checked (`_host`); CUDA tensors come
    from our own code and are not, which would cost a GPU sync per frame."""
    if torch.is_tensor(value) and value.is_cuda:
        t = value.to(device=device, dtype=torch.float32)
        if shape is not None and tuple(t.shape) != shape:
            raise PoseError(f"{name} must have shape {shape}; got {tuple(t.shape)}")
        return t
    return torch.from_numpy(_host(value, shape, name).astype(np.float32)).to(device, non_blocking=True)


_PARENT_INDEX = torch.tensor(PARENTS[1:], dtype=torch.long)


def _det3(m: torch.Tensor) -> torch.Tensor:
    return (m[..., 0, :] * torch.linalg.cross(m[..., 1, :], m[..., 2, :])).sum(-1)


def local_rotations(transforms: torch.Tensor) -> torch.Tensor:
    """(55, 3, 3) each joint's rotation relative to its parent (the root's: to the world) from
    skinning transforms (55, 4, 4) (an armature's uniform scale removed)."""
    rot = transforms[:, :3, :3]
    pure = rot / (_det3(rot).abs().clamp_min(1e-12) ** (1.0 / 3.0))[:, None, None]
    parents = on_device(_PARENT_INDEX, transforms.device)
    return torch.cat([pure[:1], pure[parents].transpose(-1, -2) @ pure[1:]])


def joint_frame(transforms: torch.Tensor) -> torch.Tensor:
    """(55, 24) per-joint table of skinning transforms (55, 4, 4): the transform (16 values, row
    major), its rotation as a unit quaternion (4), its uniform scale (1; an armature object may be
    scaled) and the joint's rotation relative to its parent as an axis-angle (3; the root's:
    relative to the world). Rows 1-21 of the last three columns are the body pose."""
    rot = transforms[:, :3, :3]
    scale = _det3(rot).abs().clamp_min(1e-12) ** (1.0 / 3.0)
    pure = rot / scale[:, None, None]
    axis_angle = quaternion_to_axis_angle(matrix_to_quaternion(local_rotations(transforms)))
    return torch.cat([transforms.reshape(-1, 16), matrix_to_quaternion(pure), scale[:, None], axis_angle], 1)


def body_pose(joints: torch.Tensor) -> torch.Tensor:
    """(63,) axis-angles of the 21 body joints from a `joint_frame` table."""
    return joints[1:22, LOCAL_AA].reshape(63)


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


@dataclasses.dataclass
class FreeConstants:
    """What posing needs of the free Gaussians that does not change with the pose."""

    scales: torch.Tensor        # (N, 3) linear
    opacities: torch.Tensor     # (N,)
    colors: torch.Tensor        # (N, 3)
    multiplier: torch.Tensor    # (N, 4, 4) right_multiplier of the rest rotations
    net: FreeNetworkState | None


def _needs_grad(*tensors: torch.Tensor) -> bool:
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def _free_constants(avatar: Avatar, inference: bool) -> FreeConstants:
    free, networks = avatar.free, avatar.networks
    net = None
    colors, opacities = free.colors.clamp(0, 1), torch.sigmoid(free.opacity_logits)
    if networks is not None and networks.field is not None:
        dtype = HALF if inference and avatar.device.type == "cuda" and not os.environ.get(FP32_ENV) else None
        net = free_network_state(networks, free.means, free.skin_joints, free.skin_weights, dtype)
        colors, opacities = net.colors, net.opacities
    return FreeConstants(torch.exp(free.log_scales), opacities, colors, right_multiplier(free.quats), net)


def _free_tensors(avatar: Avatar) -> list[torch.Tensor]:
    free = avatar.free
    tensors = [free.means, free.quats, free.log_scales, free.opacity_logits, free.colors]
    if avatar.networks is not None:
        tensors += [p for m in avatar.networks.modules() for p in m.parameters()]
    return tensors


def free_constants(avatar: Avatar) -> FreeConstants:
    """The free Gaussians' pose-independent values: computed afresh where autograd needs them
    (training), else kept in `avatar.cache` until a tensor they come from changes."""
    tensors = _free_tensors(avatar)
    if _needs_grad(*tensors):
        return _free_constants(avatar, inference=False)
    key = tuple((id(t), t._version) for t in tensors) + \
        (() if avatar.networks is None else avatar.networks.version())
    cached = avatar.cache.get("free_constants")
    if cached is None or cached[0] != key:
        with torch.no_grad():
            cached = (key, _free_constants(avatar, inference=True))
        avatar.cache["free_constants"] = cached
    return cached[1]


def pose_free(avatar: Avatar, joints: torch.Tensor, rest_means: torch.Tensor | None = None) -> GaussianSet:
    """Linear blend skinning of the free Gaussians, after the deformation network where the
    avatar has one. `joints`: a `joint_frame` table; `rest_means`: rest positions for another
    body shape (default: the shape they were made on)."""
    free = avatar.free
    c = free_constants(avatar)
    rest = free.means if rest_means is None else rest_means
    scales = c.scales
    if c.net is not None and c.net.projected is not None:
        offsets, residuals = avatar.networks.deformation.deform(c.net.projected, c.net.canonical_raw, body_pose(joints))
        rest = rest + offsets
        scales = (scales + residuals).clamp_min(MIN_SCALE)
    idx, w = free.skin_joints, free.skin_weights
    blended = (w[..., None] * joints[:, T_ROWS][idx]).sum(1).reshape(-1, 3, 4)
    means = (blended[:, :, :3] * rest[:, None, :]).sum(-1) + blended[:, :, 3]
    q = joints[:, QUAT][idx]
    signed = torch.where((q * q[:, :1]).sum(-1) < 0, -w, w)
    blend_q = (signed[..., None] * q).sum(1)
    blend_q = blend_q / torch.linalg.vector_norm(blend_q, dim=-1, keepdim=True).clamp_min(1e-12)
    s = (w * joints[:, SCALE][idx]).sum(1, keepdim=True)
    return GaussianSet(means=means, quats=apply_multiplier(c.multiplier, blend_q), scales=scales * s,
                       opacities=c.opacities, colors=c.colors)


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


@dataclasses.dataclass
class BoundConstants:
    """What posing needs of the mesh-bound Gaussians that does not change with the pose."""

    scales: torch.Tensor        # (M, 3) linear, at the rest triangle's size
    opacities: torch.Tensor     # (M,)
    colors: torch.Tensor        # (M, 3)
    multiplier: torch.Tensor    # (M, 4, 4) right_multiplier of the rotations in the triangle frames


def _bound_tensors(avatar: Avatar) -> list[torch.Tensor]:
    b = avatar.bound
    tensors = [b.barycentric, b.offsets, b.quats, b.log_scales, b.opacity_logits, b.colors]
    if avatar.networks is not None and avatar.networks.field is not None:
        tensors += list(avatar.networks.field.parameters())
    return tensors


def _bound_colors(avatar: Avatar) -> torch.Tensor:
    """The mesh-bound Gaussians' colours: a hybrid avatar's field at their canonical positions
    (on the body in the canonical pose, pose correctives included), else their own."""
    networks = avatar.networks
    if networks is None or networks.field is None:
        return avatar.bound.colors.clamp(0, 1)
    t = networks.canonical_transforms
    verts = avatar.body.pose_vertices(t[None], None, None, local_rotations(t)[None],
                                      shaped=rest_state(avatar)["vertices"])[0]
    return networks.field.appearance(networks.field.encode(_bound_means(avatar, verts)[0]))[0]


def bound_constants(avatar: Avatar) -> BoundConstants:
    """Like `free_constants`, for the mesh-bound Gaussians."""
    b = avatar.bound
    tensors = _bound_tensors(avatar)

    def make() -> BoundConstants:
        return BoundConstants(torch.exp(b.log_scales), torch.sigmoid(b.opacity_logits), _bound_colors(avatar),
                              right_multiplier(b.quats))

    if _needs_grad(*tensors):
        return make()
    key = tuple((id(t), t._version) for t in tensors) + \
        (() if avatar.networks is None else avatar.networks.version())
    cached = avatar.cache.get("bound_constants")
    if cached is None or cached[0] != key:
        with torch.no_grad():
            cached = (key, make())
        avatar.cache["bound_constants"] = cached
    return cached[1]


def _bound_means(avatar: Avatar, vertices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Positions (M, 3) on posed triangles, the triangles' frames (M, 3, 3) and their growth
    (M, 1): the square root of their area over the rest area."""
    bound = avatar.bound
    rest = rest_state(avatar)
    tri, frames = triangle_frames(vertices, rest["faces"])
    k = (_areas(tri) / rest["areas"].clamp_min(1e-12)).sqrt()[:, None]
    anchor = (bound.barycentric[:, :, None] * tri).sum(1)
    return anchor + k * (frames * bound.offsets[:, None, :]).sum(-1), frames, k


def pose_bound(avatar: Avatar, vertices: torch.Tensor) -> GaussianSet:
    """Gaussians on posed triangles; offsets and sizes grow with the triangle (scaled rigs, stretch)."""
    c = bound_constants(avatar)
    means, frames, k = _bound_means(avatar, vertices)
    return GaussianSet(means=means, quats=apply_multiplier(c.multiplier, matrix_to_quaternion(frames)),
                       scales=c.scales * k, opacities=c.opacities, colors=c.colors)


def _pose_device(avatar: Avatar, transforms: torch.Tensor, expression: torch.Tensor | None,
                 rots: torch.Tensor | None, state: dict) -> GaussianSet:
    """Posing proper: device tensors in, Gaussians out, no host synchronisation."""
    joints = joint_frame(transforms)
    parts = []
    if len(avatar.free):
        parts.append(pose_free(avatar, joints, state.get("free_means")))
    if len(avatar.bound):
        verts = avatar.body.pose_vertices(transforms[None], None, expression, rots, shaped=state["vertices"])[0]
        parts.append(pose_bound(avatar, verts))
    return GaussianSet.concat(parts)


PER_FRAME = ("means", "quats", "scales")
"""What a pose changes; opacity and colour are the same every frame."""


class PoseGraph:
    """One avatar's posing captured as a CUDA graph and replayed per frame.

    Posing is a hundred small kernels; launched one by one from Python they cost several
    milliseconds, replayed as one graph a fraction of that. Used for inference on CUDA only
    (no autograd). Positions, rotations and scales are copied out, so they stay valid after the
    next frame; opacities and colours are the graph's own (every replay writes the same values)."""

    def __init__(self, avatar: Avatar, state: dict, t: torch.Tensor, expression: torch.Tensor | None,
                 rots: torch.Tensor | None) -> None:
        self.state = state
        self.inputs = (t.clone(), None if expression is None else expression.clone(),
                       None if rots is None else rots.clone())
        device = t.device
        free_constants(avatar), bound_constants(avatar)  # made outside the capture, kept in the cache
        side = torch.cuda.Stream(device=device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            for _ in range(2):
                _pose_device(avatar, *self.inputs, state)
        torch.cuda.current_stream(device).wait_stream(side)
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
        return GaussianSet(**{name: value.clone() if name in PER_FRAME else value
                              for name, value in self.output._tensors().items()})


def _graphable(avatar: Avatar) -> bool:
    return (avatar.device.type == "cuda" and not torch.is_grad_enabled()
            and not os.environ.get("DREAMWALTZ_NO_CUDA_GRAPHS") and not avatar.cache.get("no_graphs")
            and not any(p.requires_grad for p in (avatar.free.means, avatar.bound.offsets)))


def pose_with_transforms(avatar: Avatar, transforms: Any, expression: Any = None,
                         local_rotations: Any = None, betas: Any = None) -> GaussianSet:
    """World-space Gaussians for skinning transforms G_j (55, 4, 4); expression values, the
    joints' local rotations (55, 3, 3, for pose correctives) and a body shape other than the
    trained one (`betas`; the transforms must then come from that shape's skeleton) are optional.

    The one posing function: every renderer and exporter goes through it (DESIGN.md §3). The
    deformation network's body pose is read from the transforms themselves (each joint's
    rotation relative to its parent), so whatever moves the bones drives it."""
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
    rotations, transforms = params_to_transforms(avatar, betas, **params)
    return pose_with_transforms(avatar, transforms, expression, rotations, betas)


def params_to_transforms(avatar: Avatar, betas: Any = None, transl: Any = None,
                         **params: Any) -> tuple[np.ndarray, np.ndarray]:
    """(per-joint rotations, skinning transforms (55, 4, 4)) of one frame's SMPL-X pose
    parameters (without expression) on `avatar`'s body, or another shape (`betas`)."""
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
    return rotations, transforms
